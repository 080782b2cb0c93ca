"""ldm env library jsbgym.

jsbgym envs, added by `ldm-envs add`.

The library runs in its own Python 3.11 environment (api gymnasium), built by the venv or
docker backend from `manifest.yaml`; this package only carries the manifest and never imports
the library.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
