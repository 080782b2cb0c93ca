"""A toy env library for tests: CartPole, Pendulum, a short CartPole and an unmakeable env."""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
