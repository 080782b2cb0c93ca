"""A toy env library for tests: Gymnasium's CartPole and Pendulum, plus an env that cannot be made."""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
