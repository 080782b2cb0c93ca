"""ldm env library gym-super-mario-bros.

gym-super-mario-bros envs, added by `ldm-envs add`.

The library runs in its own Python 3.11 environment (api gym21), built by the venv or
docker backend from `manifest.yaml`; this package only carries the manifest and never imports
the library.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
