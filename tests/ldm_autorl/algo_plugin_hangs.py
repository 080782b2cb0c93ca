"""An algorithm plugin whose import hangs; its own module, so no other test finds it imported."""

import time

time.sleep(30)
CANDIDATES = None
