"""A plugin module that ends the process on import, as a stray `sys.exit()` would."""

import sys

sys.exit(3)
