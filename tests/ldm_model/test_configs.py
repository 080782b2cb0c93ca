"""Named model configs (sizes against the paper) and the training config's identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from ldm_model.cli import meta_parameters
from ldm_model.config import NAMED_CONFIGS, PAPER_PARAMETERS, get_config
from ldm_model.data import WindowSampler
from ldm_model.model import LDM
from ldm_model.training import TrainConfig


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_paper_configs_within_one_percent(name: str) -> None:
    count = meta_parameters(name)
    paper = PAPER_PARAMETERS[name]
    assert abs(count - paper) / paper < 0.01, (name, count, paper)


def test_308m_is_the_papers_main_model() -> None:
    c = get_config("308M")
    assert (c.num_layers, c.num_heads, c.hidden_size, c.context) == (12, 12, 768, 2048)


def test_tiny_runs_a_forward(tiny_dataset: Path) -> None:
    torch.manual_seed(0)
    model = LDM(get_config("tiny"))
    batch = WindowSampler(tiny_dataset, context=8).sample(0, 2)
    out = model(batch)
    assert out.logits.shape == (2, 8, 28, 1024)
    assert torch.isfinite(out.logits).all()
    assert model.num_parameters() < 5_000_000
    assert set(NAMED_CONFIGS) >= {"tiny", *PAPER_PARAMETERS}


def test_train_config_defaults_and_identity(tmp_path: Path) -> None:
    tiny = TrainConfig(model="tiny", out=tmp_path / "a")
    assert tiny.batch_size == 32
    assert (tiny.lr, tiny.betas, tiny.eps) == (2.5e-4, (0.9, 0.999), 1e-8)
    assert TrainConfig(model="308M").batch_size == 1024
    assert tiny.window == 64
    # execution options are not part of the identity; training options are
    other = TrainConfig(model="tiny", out=tmp_path / "b", num_workers=3, log_every=1)
    assert tiny.run_key() == other.run_key()
    assert tiny.run_key() != TrainConfig(model="tiny", lr=1e-3).run_key()
    # an inline config equal to a named one is the same training
    inline = TrainConfig(model=get_config("tiny"), out=tmp_path / "a")
    assert inline.run_key() == tiny.run_key()
    # steps may grow on resume; lr may not
    longer = TrainConfig(model="tiny", steps=tiny.steps * 2)
    assert longer.resume_differences(tiny) == {}
    assert "lr" in TrainConfig(model="tiny", lr=1e-3).resume_differences(tiny)
    diff = TrainConfig(model="32M").resume_differences(tiny)
    assert "model.hidden_size" in diff
    # round trip through JSON (what checkpoint.json holds)
    assert TrainConfig.model_validate_json(tiny.model_dump_json()) == tiny


def test_train_config_refusals() -> None:
    with pytest.raises(ValidationError, match="unknown model config"):
        TrainConfig(model="13B")
    with pytest.raises(ValidationError, match="exceeds the model's context"):
        TrainConfig(model="tiny", context=65)
    with pytest.raises(ValidationError, match="device"):
        TrainConfig(device="tpu")
    assert TrainConfig(libraries="classic-control").libraries == ("classic-control",)
    assert TrainConfig(libraries=["b", "a"]).library_label() == "a+b"
    assert TrainConfig().library_label() == "all"
