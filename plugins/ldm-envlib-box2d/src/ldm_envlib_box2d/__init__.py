"""ldm env library: Gymnasium's Box2D tasks.

LunarLander (discrete and continuous), BipedalWalker (normal and hardcore) and
CarRacing (96x96 RGB pixels, continuous and discrete). They need the Box2D physics
engine; `box2d==2.3.10` ships manylinux wheels for CPython 3.6-3.13, so no swig and no
compiler are needed on Python 3.11. The library runs in its own virtualenv; this
package only carries the manifest and never imports it.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
