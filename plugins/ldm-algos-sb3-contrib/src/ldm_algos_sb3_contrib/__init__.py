"""ldm algorithm plugin: sb3-contrib's ARS, QR-DQN, TQC and TRPO.

Each algorithm comes with its library defaults and at least one alternative tuned for short
budgets, declared as data in `candidates.yaml` and validated by `ldm_autorl.candidates` (which
imports sb3-contrib only when needed). This package itself imports nothing heavy.
"""

from pathlib import Path

CANDIDATES = Path(__file__).with_name("candidates.yaml")
