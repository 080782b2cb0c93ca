"""ldm env library: OpenAI Procgen.

Procedurally generated arcade games with 64x64x3 RGB observations and 15 discrete
actions, played in `distribution_mode='easy'`. procgen 0.10.7 ships wheels only for
CPython <= 3.10 and registers `procgen-<game>-v0` with old gym through gym3's
`ToGymEnv` (gym 0.21-style API, internal auto-reset, no `seed(s)`), so it runs in
its own Python 3.10 virtualenv with gym 0.23.1. This package never imports it.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
