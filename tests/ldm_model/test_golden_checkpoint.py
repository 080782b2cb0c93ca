"""A checkpoint written by an earlier release still loads and acts the same.

`tests/fixtures/golden/checkpoint/` was written by `tools/make_golden_fixtures.py` with the
code of its day: the smallest model, one AdamW step, and the actions and logits a policy loaded
from it gave on fixed inputs (`expected_policy.npz`). These tests open it with today's readers.
A failure means existing checkpoints no longer load (a renamed config field, a changed state
dict, another file layout) or no longer act the same: keep reading the old ones, or change the
format deliberately (bump `FORMAT_VERSION`), regenerate the fixtures and say so.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_envs.spaces import BoxSpace, DiscreteSpace
from ldm_model.config import ModelConfig
from ldm_model.policy import LDMPolicy
from ldm_model.training.checkpoint import (
    FORMAT_VERSION,
    INFO_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_STATE_FILE,
    load_checkpoint,
    load_model,
    optimizer_param_names,
    read_info,
)

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "checkpoint"
STEP = Path("checkpoints") / "step-00000001"
GOLDEN_MODEL = ModelConfig(
    name="golden",
    hidden_size=2,
    num_layers=1,
    num_heads=1,
    intermediate_size=4,
    context=8,
    token_dim=1,
    image_dim=2,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the golden run folder: nothing a reader does can touch the committed files."""
    copy = tmp_path_factory.mktemp("golden") / "checkpoint"
    shutil.copytree(GOLDEN, copy)
    return copy


def policy_inputs(steps: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The (obs, reward, done) of 2 vector envs per step that the script fed (same formula)."""
    out = []
    for t in range(steps):
        obs = (np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5) * (t + 1) / 4
        reward = np.array([t - 1.0, 0.5 * t], np.float32)
        done = np.array([False, t == 2])
        out.append((obs, reward, done))
    return out


def test_the_record_reads_with_its_format_and_configs(run: Path) -> None:
    assert sorted(p.name for p in (run / STEP).iterdir()) == sorted(
        [INFO_FILE, MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_STATE_FILE]
    )
    info = read_info(run / STEP)
    assert info.format_version == FORMAT_VERSION == 1
    assert info.model == GOLDEN_MODEL
    assert info.train.model == GOLDEN_MODEL
    assert (info.train.batch_size, info.train.context, info.train.steps) == (2, 8, 1)
    assert info.step == 1 and info.metrics == {"loss": 1.0} and info.world_size == 1
    assert info.dataset.root == "tests/fixtures/golden/dataset"
    assert [(e.env_id, e.transitions) for e in info.dataset.envs] == [
        ("Image-v0", 10),
        ("VecDiscrete-v0", 40),
    ]
    assert set(info.files) == {MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_STATE_FILE}


def test_the_weights_load_verified_into_the_recorded_model(run: Path) -> None:
    ckpt = load_checkpoint(run, expected_config=GOLDEN_MODEL)  # the run folder: its latest
    assert ckpt.path == run / STEP and ckpt.step == 1
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values())
    model, _ = load_model(run / STEP)
    assert model.num_parameters() == ckpt.info.num_parameters
    assert not model.training and model.config == GOLDEN_MODEL
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt.state_dict[name], rtol=0, atol=0, msg=name)


def test_the_optimizer_state_reads_for_the_same_parameters(run: Path) -> None:
    model, ckpt = load_model(run)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = ckpt.optimizer_state(optimizer_param_names(model, optimizer))
    optimizer.load_state_dict(state)
    # only the norms had gradients at fixture time: they alone carry AdamW state
    names = optimizer_param_names(model, optimizer)
    with_state = sorted(names[pid] for pid in state["state"])
    assert with_state and all("norm" in name for name in with_state)
    for values in state["state"].values():
        assert set(values) >= {"exp_avg", "exp_avg_sq", "step"}
        assert float(values["step"]) == 1.0


def test_a_policy_from_the_checkpoint_acts_as_recorded(run: Path) -> None:
    expected = np.load(run / "expected_policy.npz")
    obs_space = BoxSpace(shape=(4,), low=-math.inf, high=math.inf)
    policy = LDMPolicy.from_checkpoint(run, obs_space, DiscreteSpace(n=2), 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as at fixture time: the same reduction order
    try:
        for t, (obs, reward, done) in enumerate(policy_inputs()):
            actions = np.asarray(policy.act(obs, reward, done))
            assert policy.last_logits is not None
            np.testing.assert_allclose(
                policy.last_logits.cpu().numpy(), expected["logits"][t], rtol=1e-4, atol=1e-5
            )
            np.testing.assert_array_equal(actions, expected["actions"][t])
    finally:
        torch.set_num_threads(threads)
