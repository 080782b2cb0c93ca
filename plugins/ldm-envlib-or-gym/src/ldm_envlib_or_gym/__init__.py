"""ldm env library: or-gym operations-research environments.

Supply-chain inventory control, newsvendor, portfolio optimisation, TSP, bin packing
and vehicle routing: vector observations with unusual dtypes (int32, uint32, float16)
and integer-valued Box actions. or-gym 0.5.0 pins `gym<=0.19` and speaks the old
gym 0.21-style API (4-tuple step, `env.seed`), so it runs in its own Python 3.8
virtualenv with gym 0.17.3 and NumPy < 2. This package never imports it.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
