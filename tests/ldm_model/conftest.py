"""Shared fixtures of the ldm-model tests: tiny synthetic datasets (see `datasets.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ldm_model.datasets import IMAGE, VECTOR_BOX, VECTOR_DISCRETE, make_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Box(4)/Discrete(2) env and a Box(3)/Box(1) env, 300 rows each; returns the root."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    make_dataset(root, envs=(VECTOR_DISCRETE, VECTOR_BOX))
    return root


@pytest.fixture(scope="session")
def tiny_image_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_dataset` plus a 7x7x3 uint8 image / Discrete(3) env; returns the root."""
    root = tmp_path_factory.mktemp("tiny_image_dataset")
    make_dataset(root, envs=(VECTOR_DISCRETE, VECTOR_BOX, IMAGE))
    return root
