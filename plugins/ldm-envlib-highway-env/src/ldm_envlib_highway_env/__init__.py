"""ldm env library highway-env.

highway-env: driving tasks (highway, merge, roundabout, parking, intersection).

The library runs in its own Python 3.11 environment (api gymnasium), built by the venv or
docker backend from `manifest.yaml`; this package only carries the manifest and never imports
the library.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
