"""A plugin module whose import hangs (a network call, a lock, a prompt)."""

import time

time.sleep(30)
MANIFEST = None
