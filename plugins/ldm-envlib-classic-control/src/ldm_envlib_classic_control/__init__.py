"""ldm env library: Gymnasium's classic control tasks.

The five textbook control problems: tiny float32 vector observations, discrete and
continuous actions, pure-Python physics. Cheap enough to be the smoke test of every
stage of the pipeline. The library runs in its own Python 3.11 virtualenv; this
package only carries the manifest and never imports it.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
