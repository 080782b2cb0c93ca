"""The GPU execution options, checked on the CPU: each computes what the plain path does.

`attention` (eager, sdpa, flash), `compile`, `fused_adamw` and bf16 autocast change how the
step runs, not what it computes: on the same weights and batch, logits stay within a float
tolerance of the plain fp32 path, and a short run gives the same losses. They resume a run
made without them. `tools/bench_train.py --device cpu` runs the benchmark's device path as a
smoke run and imports nothing the GPU machine lacks.

Tolerances: fp32 paths agree to 1e-5 (absolute, on logits of order 1: summation order only);
bf16 autocast to 0.1 absolute on the logits (bf16 keeps 8 bits of mantissa, the backbone's
matmuls accumulate that rounding) and 2% on the loss.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
import torch

from ldm_model.config import ModelConfig, get_config
from ldm_model.model import CAUSAL_SDPA, LDM
from ldm_model.training import TrainConfig, load_checkpoint, train
from ldm_model.training.config import DEFAULT_BATCH_SIZE, EXECUTION_FIELDS, PAPER_BATCH_SIZE
from ldm_model.training.distributed import DistContext
from ldm_model.training.loss import (
    attention_context,
    attention_implementation,
    execution_flags_kept,
    fused_optimizer,
    make_optimizer,
)
from ldm_model.training.trainer import TrainStep

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tools" / "bench_train.py"
FP32_TOL = 1e-5
BF16_LOGITS_TOL = 0.1
BF16_LOSS_RTOL = 0.02
CPU = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"), backend=None)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Two slow shared cores: one intra-op thread is faster than two here."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """tools/bench_train.py as a module (its synthetic batches and FLOPs formula)."""
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pair(attention: str) -> tuple[LDM, LDM]:
    """The plain model and one with `attention`, holding the same weights."""
    torch.manual_seed(0)
    plain = LDM(get_config("tiny")).eval()
    other = LDM(get_config("tiny"), attention=attention).eval()
    other.load_state_dict(plain.state_dict())
    return plain, other


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize(
    ("option", "implementation"),
    [("eager", "eager"), ("sdpa", "sdpa"), ("auto", "sdpa"), ("flash", CAUSAL_SDPA)],
)
def test_attention_options_give_the_logits_of_the_plain_path(
    option: str, implementation: str, bench: ModuleType
) -> None:
    assert attention_implementation(option) == implementation
    plain, other = _pair(implementation)
    assert other.backbone.config._attn_implementation == implementation
    batch = bench.synthetic_batch(get_config("tiny"), 3, 32, seed=1)
    with torch.no_grad():
        ref = plain(batch).logits
        with attention_context(option):
            got = other(batch).logits
    assert ref.abs().max() > 0.1  # logits of substance, not all near zero
    assert _max_diff(got, ref) < FP32_TOL
    # the loss path too (decoded dims only, masked argmax)
    with torch.no_grad(), attention_context(option):
        a, b = plain.loss(batch), other.loss(batch)
    assert float(b.loss) == pytest.approx(float(a.loss), abs=FP32_TOL)


def test_causal_sdpa_refuses_queries_against_a_longer_cache_without_a_mask() -> None:
    from transformers import DynamicCache

    model = LDM(get_config("tiny"), attention=CAUSAL_SDPA).eval()
    cache = DynamicCache()
    embeds = torch.randn(1, 4, get_config("tiny").hidden_size)
    with torch.no_grad():
        model.backbone(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="need an attention mask"):
            model.backbone(inputs_embeds=embeds, past_key_values=cache, use_cache=True)


def test_unknown_attention_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown attention implementation 'flash2'"):
        LDM(get_config("tiny"), attention="flash2")
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(attention="flash2")


def test_bf16_autocast_stays_near_fp32(bench: ModuleType) -> None:
    """CPU autocast stands in for CUDA's: the same ops run in bf16."""
    torch.manual_seed(0)
    model = LDM(get_config("tiny")).eval()
    batch = bench.synthetic_batch(get_config("tiny"), 3, 32, seed=2)
    with torch.no_grad():
        ref = model(batch).logits
        ref_loss = float(model.loss(batch).loss)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(batch).logits
            got_loss = float(model.loss(batch).loss)
    assert got.dtype == torch.bfloat16  # autocast did run the decoder in bf16
    assert 0 < _max_diff(got, ref) < BF16_LOGITS_TOL
    assert got_loss == pytest.approx(ref_loss, rel=BF16_LOSS_RTOL)


def test_fused_adamw_resolves_to_plain_on_the_cpu_and_updates_alike(bench: ModuleType) -> None:
    assert fused_optimizer(None, torch.device("cpu")) is False
    assert fused_optimizer(None, torch.device("cuda")) is True
    assert fused_optimizer(False, torch.device("cuda")) is False
    assert fused_optimizer(True, torch.device("cpu")) is True

    base = {"model": "tiny", "batch_size": 3, "context": 16, "mlflow": False, "device": "cpu"}
    plain = TrainStep(TrainConfig(**base), ctx=CPU, has_images=False)
    assert all(not g["fused"] for g in plain.optimizer.param_groups)
    fused = TrainStep(TrainConfig(**base, fused_adamw=True), ctx=CPU, has_images=False)
    assert all(g["fused"] for g in fused.optimizer.param_groups)
    batch = bench.synthetic_batch(get_config("tiny"), 3, 16, seed=3)
    for _ in range(3):
        a, b = plain(batch), fused(batch)
        assert b["loss"] == pytest.approx(a["loss"], abs=FP32_TOL)
    pa, pb = plain.ldm.state_dict(), fused.ldm.state_dict()
    assert max(_max_diff(pa[k], pb[k]) for k in pa) < FP32_TOL


def test_execution_flags_survive_loading_a_state_saved_otherwise() -> None:
    model = LDM(get_config("tiny"))
    config = TrainConfig(fused_adamw=False)
    plain = make_optimizer(model, config, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    plain.step()
    fused = make_optimizer(model, config.model_copy(update={"fused_adamw": True}))
    with execution_flags_kept(fused):
        fused.load_state_dict(plain.state_dict())
    assert all(g["fused"] and g["foreach"] is False for g in fused.param_groups)
    steps = [s["step"] for s in fused.state.values()]
    assert steps and all(s.dtype == torch.float32 and float(s) == 1.0 for s in steps)
    fused.step()  # the fused kernel takes the loaded state


def test_execution_options_do_not_change_the_run() -> None:
    assert {"fused_adamw", "attention", "compile"} <= EXECUTION_FIELDS
    plain = TrainConfig(model="tiny")
    fast = TrainConfig(model="tiny", fused_adamw=True, attention="flash", compile=True)
    assert plain.resume_differences(fast) == {}
    assert plain.run_key() == fast.run_key()
    # a config saved before these options existed still validates, with their defaults
    old = plain.model_dump(mode="json", exclude={"fused_adamw", "attention", "compile"})
    assert TrainConfig.model_validate(old) == plain


def test_resuming_with_other_execution_options(tiny_dataset: Path, tmp_path: Path) -> None:
    base = {
        "model": "tiny",
        "data_root": tiny_dataset,
        "batch_size": 4,
        "context": 8,
        "log_every": 1,
        "checkpoint_every": 2,
        "mlflow": False,
    }
    whole = train(TrainConfig(**base, steps=4, out=tmp_path / "whole"), progress=False)
    train(TrainConfig(**base, steps=2, out=tmp_path / "switched"), progress=False)
    switched = TrainConfig(
        **base, steps=4, out=tmp_path / "switched", fused_adamw=True, attention="eager"
    )
    resumed = train(switched, progress=False)
    assert resumed.start_step == 2 and resumed.step == 4
    a = load_checkpoint(tmp_path / "whole").model_state
    b = load_checkpoint(tmp_path / "switched").model_state
    assert max(_max_diff(a[k], b[k]) for k in a) < FP32_TOL
    losses = [r["loss"] for r in resumed.history]
    assert losses == pytest.approx([r["loss"] for r in whole.history][2:], abs=FP32_TOL)


def test_the_cli_options_reach_the_run(tiny_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ldm_model import cli

    runner = CliRunner()
    out = tmp_path / "run"
    common = ["train", "--dataset", str(tiny_dataset), "--out", str(out), "--no-progress"]
    tiny = ["--batch-size", "2", "--context", "8", "--steps", "1", "--no-track"]
    result = runner.invoke(cli.app, [*common, *tiny, "--fused-adamw", "--attention", "eager"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["fused_adamw"], saved["attention"], saved["compile"]) == (True, "eager", False)
    bad = runner.invoke(cli.app, [*common, "--attention", "flash2"])
    assert bad.exit_code == 2
    assert "error: option attention: Input should be 'auto', 'eager', 'sdpa' or 'flash'" in (
        bad.output
    )


@pytest.mark.slow
def test_compiled_training_gives_the_losses_of_the_plain_one(bench: ModuleType) -> None:
    """torch.compile of the backbone on the CPU (inductor: ~30-60 s of compilation here)."""
    base = {"model": "tiny", "batch_size": 3, "context": 16, "mlflow": False, "device": "cpu"}
    plain = TrainStep(TrainConfig(**base), ctx=CPU, has_images=False)
    compiled = TrainStep(
        TrainConfig(**base, compile=True, attention="flash"), ctx=CPU, has_images=False
    )
    batch = bench.synthetic_batch(get_config("tiny"), 3, 16, seed=4)
    with torch.no_grad():
        ref, got = plain.ldm(batch).logits, compiled.ldm(batch).logits
    assert _max_diff(got, ref) < FP32_TOL
    for _ in range(3):
        a, b = plain(batch), compiled(batch)
        assert b["loss"] == pytest.approx(a["loss"], abs=FP32_TOL)
    # compiled in place: the state dict keeps its keys (checkpoints load uncompiled)
    assert compiled.ldm.state_dict().keys() == plain.ldm.state_dict().keys()


def test_the_736m_config_trains_with_the_papers_batch_of_384() -> None:
    assert TrainConfig(model="736M").batch_size == 384 == DEFAULT_BATCH_SIZE["736M"]
    assert TrainConfig(model="308M").batch_size == PAPER_BATCH_SIZE
    assert TrainConfig(model="736M", batch_size=64).batch_size == 64


# -- the benchmark's device path -----------------------------------------------------------------


def _allowed_distributions() -> set[str]:
    """torch, transformers, numpy, pydantic and what they require (extras apart), our own two."""
    from packaging.requirements import Requirement

    todo = ["torch", "transformers", "numpy", "pydantic"]
    seen: set[str] = set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen | {"ldm-envs", "ldm-model"}


def _imported_by_the_allowed() -> set[str]:
    """Top-level modules torch and transformers import by themselves (optional ones included)."""
    code = (
        "import json, sys, numpy, pydantic, torch, torch.optim, torch.distributed\n"
        "from transformers import AttentionInterface, LlamaConfig, LlamaModel\n"
        "LlamaModel(LlamaConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,\n"
        "    num_attention_heads=2, vocab_size=1, pad_token_id=None, bos_token_id=None,\n"
        "    eos_token_id=None))\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def _tiny_flops(c: ModelConfig, context: int) -> float:
    """6 N + 12 L H T for `tiny`, N counted by hand from the config (every action dim decoded)."""
    h, kv = c.hidden_size, (c.num_kv_heads or c.num_heads) * (c.hidden_size // c.num_heads)
    layer = h * h * 2 + h * kv * 2 + 3 * h * c.intermediate_size
    merge = ((c.obs_dims + c.act_dims + 2) * c.token_dim + c.image_dim) * h
    decoder = h * c.act_dims * c.n_bins
    return 6.0 * (c.num_layers * layer + merge + decoder) + 12.0 * c.num_layers * h * context


def test_bench_device_path_smoke_imports_only_what_the_gpu_machine_has(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [
        "--device", "cpu", "--models", "tiny", "--context", "16", "--batch-size", "2",
        "--steps", "2", "--warmup", "1", "--variants", "fp32-eager,bf16+sdpa+fused",
        "--json", str(out),
    ]  # fmt: skip
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = ['bench_train.py', *{args!r}]\n"
        f"runpy.run_path({str(BENCH)!r}, run_name='__main__')\n"
        "print('MODULES=' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("tiny", "fp32-eager"),
        ("tiny", "bf16+sdpa+fused"),
    ]
    for row in rows:
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["context"] == 16
        assert row["flops_per_token"] == _tiny_flops(get_config("tiny"), 16)
        assert row["achieved_tflops"] == pytest.approx(
            row["flops_per_token"] * row["tokens_per_s"] / 1e12
        )
        assert row["mfu"] is None  # no peak known for a CPU
    assert "fp32-eager" in proc.stdout and "tokens/s" in proc.stdout

    # nothing beyond torch, transformers, numpy, pydantic (and what they need) and our sources
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES="))
    modules = json.loads(line.removeprefix("MODULES="))
    owners = metadata.packages_distributions()
    allowed = _allowed_distributions()
    optional = _imported_by_the_allowed()  # what they import themselves when it is installed
    foreign = {
        m: owners[m]
        for m in modules
        if m in owners
        and m not in optional
        and not {d.lower().replace("_", "-") for d in owners[m]} & allowed
    }
    assert foreign == {}
    for name in ("polars", "gymnasium", "mlflow", "stable_baselines3", "matplotlib"):
        assert name not in modules


def test_bench_device_path_refuses_an_unknown_variant() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--variants", "fp64-magic"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "unknown variant(s) ['fp64-magic']" in proc.stderr
