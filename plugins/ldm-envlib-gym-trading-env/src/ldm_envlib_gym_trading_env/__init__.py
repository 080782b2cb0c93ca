"""ldm env library gym-trading-env.

Gym Trading Env: single-asset trading on price data shipped with the plugin.

The library runs in its own Python 3.11 environment (api gymnasium), built by the venv or
docker backend from `manifest.yaml`; this package only carries the manifest and never imports
the library.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
