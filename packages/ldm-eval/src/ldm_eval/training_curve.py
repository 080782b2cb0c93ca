"""The paper's Fig. 3: the share of trained envs at >= 80% / 100% of reference as training goes on.

`TrainingEvaluator` implements ldm-model's `TrainerCallback` (ldm-model owns the protocol and
never imports this package). Every `eval_every` steps, and at the last step, the trainer hands
it the live model; it runs the paper's protocol (`protocol.run_protocol`: fresh rollouts, the
context kept across a rollout's episodes, argmax under the action mask, every rollout of every
env batched together, as the final evaluation does) on the envs the model trains on, with
`eval_episodes` episodes per rollout, scores them against the same references as the final
evaluation (`normalize.reference_runs`), and

- returns `eval/share_ge_80`, `eval/share_ge_100`, `eval/transitions`, `eval/envs_scored`,
  `eval/seconds` (the trainer logs them on the training's MLflow run at that step);
- writes a row to `<run folder>/training_curve.csv` (`CURVE_COLUMNS`, rewritten atomically,
  one row per step: a resumed run drops the rows past its checkpoint and evaluates them again);
- at the end of the call, draws `training_curve.png` (shares against transitions seen) beside
  it and logs both files on the training run.

Shares are over the envs that have a usable reference and whose rollouts all finished (a failed
rollout is reported, never counted as zero), as in the final evaluation's threshold curve.

Cost: `train_seconds` is the training loop's wall time up to the row, evaluations included, so
`sum(eval_seconds) / train_seconds` of the last row is the share of training time spent
evaluating (`overhead`). After a resume it counts from the last kept row (the time lost between
that row and the checkpoint is not counted).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from rich.console import Console

from ldm_envs.atomic import atomic_write_bytes, atomic_write_text
from ldm_eval.aggregate import fraction_at_least
from ldm_eval.policies import Policy, SlotInfo, shared_codecs
from ldm_eval.protocol import EnvTarget, EvalConfig
from ldm_eval.threads import torch_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ldm_model.model import LDM
    from ldm_model.training.callbacks import TrainingState
    from ldm_model.training.config import TrainConfig

__all__ = [
    "CURVE_COLUMNS",
    "CURVE_FILE",
    "CURVE_PNG",
    "LiveModelPolicyFactory",
    "TrainingEvaluator",
    "curve_figure",
    "curve_html",
    "from_train_config",
    "overhead",
    "read_curve",
]

CURVE_FILE = "training_curve.csv"
CURVE_PNG = "training_curve.png"
CURVE_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64(),
    "transitions": pl.Int64(),
    "share_ge_80": pl.Float64(),
    "share_ge_100": pl.Float64(),
    "envs_scored": pl.Int64(),
    "envs": pl.Int64(),
    "eval_seconds": pl.Float64(),
    "train_seconds": pl.Float64(),
}
CURVE_COLUMNS: tuple[str, ...] = tuple(CURVE_SCHEMA)
POLICY = "ldm"


class LiveModelPolicyFactory:
    """`LDMPolicy` over a model in memory (the one being trained), on the model's device."""

    def __init__(self, model: LDM, *, context: int | None = None) -> None:
        self.model = model
        self.context = context

    def __call__(self, slots: Sequence[SlotInfo]) -> Policy:
        from ldm_model.policy import LDMPolicy

        codecs = shared_codecs(
            [s.observation_space for s in slots],
            [s.action_space for s in slots],
            n_bins=self.model.config.n_bins,
        )
        return LDMPolicy(self.model, codecs, len(slots), context=self.context)


def read_curve(path: str | Path) -> pl.DataFrame:
    """The rows of a `training_curve.csv` (empty frame with `CURVE_SCHEMA` when absent)."""
    path = Path(path)
    if not path.is_file():
        return pl.DataFrame(schema=CURVE_SCHEMA)
    frame = pl.read_csv(path, schema_overrides=CURVE_SCHEMA)
    return frame.select([pl.col(c).cast(t) for c, t in CURVE_SCHEMA.items() if c in frame.columns])


def _write_curve(path: Path, frame: pl.DataFrame) -> None:
    buf = io.StringIO()
    frame.sort("step").write_csv(buf)
    atomic_write_text(path, buf.getvalue())


def overhead(frame: pl.DataFrame) -> tuple[float, float, float] | None:
    """(seconds evaluating, training loop seconds, their ratio) of a curve; None when empty."""
    if frame.is_empty():
        return None
    spent = float(frame["eval_seconds"].sum())
    total = float(frame.sort("step")["train_seconds"][-1])
    return spent, total, spent / total if total > 0 else math.nan


class TrainingEvaluator:
    """The paper's protocol every `eval_every` training steps (a ldm-model `TrainerCallback`).

    Args:
        config: the protocol (episodes per rollout, rollouts, seed, backend, workers, batch).
        envs: the envs to evaluate (default: every env the model trains on that can be scored).
        copy_to: also keep `training_curve.csv` / `.png` in this folder (the suite's report
            folder).
        torch_threads: torch threads while the model acts (None: leave as is).
        console: where the one-line summary of each evaluation goes.
    """

    def __init__(
        self,
        config: EvalConfig | None = None,
        *,
        envs: Sequence[EnvTarget] | None = None,
        copy_to: Path | None = None,
        torch_threads: int | None = None,
        console: Console | None = None,
    ) -> None:
        self.config = config or EvalConfig()
        self.envs = list(envs) if envs is not None else None
        self.copy_to = copy_to
        self.torch_threads = torch_threads
        self.console = console or Console(stderr=True)
        self.targets: list[EnvTarget] = []
        self.references = pl.DataFrame()
        self.planned = 0
        self.base_seconds = 0.0
        self.path: Path | None = None

    # -- TrainerCallback --------------------------------------------------------------------

    def on_train_start(self, state: TrainingState) -> None:
        """Pick the envs and their references; keep the curve's rows up to the resumed step."""
        self.path = state.out / CURVE_FILE
        self.targets, self.references, notes = self._plan(state)
        for note in notes:
            self.console.print(f"[yellow]eval during training:[/] {note}", highlight=False)
        rows = read_curve(self.path)
        kept = rows.filter(pl.col("step") <= state.start_step)
        if kept.height != rows.height:
            _write_curve(self.path, kept)
        self.base_seconds = float(kept.sort("step")["train_seconds"][-1]) if kept.height else 0.0

    def on_eval_step(self, state: TrainingState) -> dict[str, float]:
        """Evaluate the live model; write the curve's row; return the metrics to log."""
        from ldm_eval.pipeline import score_policies

        if self.path is None:
            self.on_train_start(state)
        assert self.path is not None
        t0 = time.perf_counter()
        model = state.model
        was_training = model.training
        model.eval()
        try:
            with torch_threads(self.torch_threads):
                scores = (
                    score_policies(
                        self.targets,
                        {POLICY: LiveModelPolicyFactory(model)},
                        self.references,
                        self.config,
                        console=self.console,
                    )
                    if self.targets
                    else pl.DataFrame({"scored": [], "score": []})
                )
        finally:
            model.train(was_training)
        scored = scores.filter(pl.col("scored"))["score"].to_numpy()
        seconds = time.perf_counter() - t0
        row = {
            "step": state.step,
            "transitions": state.transitions,
            "share_ge_80": fraction_at_least(scored, 0.8),
            "share_ge_100": fraction_at_least(scored, 1.0),
            "envs_scored": len(scored),
            "envs": self.planned,
            "eval_seconds": seconds,
            "train_seconds": self.base_seconds + state.elapsed_s + seconds,
        }
        frame = read_curve(self.path).filter(pl.col("step") != state.step)
        frame = pl.concat([frame, pl.DataFrame([row], schema=CURVE_SCHEMA)])
        _write_curve(self.path, frame)
        self._copy()

        def share(v: float) -> str:
            return "-" if math.isnan(v) else f"{100 * v:.0f}%"

        self.console.print(
            f"eval at step {state.step:,} ({state.transitions:,} transitions): "
            f"{share(row['share_ge_80'])} of {len(scored)} env(s) at >=80% of reference, "
            f"{share(row['share_ge_100'])} at >=100% ({seconds:.1f} s)",
            highlight=False,
        )
        metrics = {
            "eval/transitions": float(state.transitions),
            "eval/envs_scored": float(len(scored)),
            "eval/seconds": seconds,
        }
        for key in ("share_ge_80", "share_ge_100"):
            if not math.isnan(row[key]):
                metrics[f"eval/{key}"] = row[key]
        return metrics

    def on_train_end(self, state: TrainingState) -> None:
        """Draw the curve, log it and the CSV on the training run, with the cost of evaluating."""
        if self.path is None or not self.path.is_file():
            return
        frame = read_curve(self.path)
        fig = curve_figure(frame, title=f"{state.config.resolved_model().name}: envs at reference")
        fig.savefig(self.path.with_name(CURVE_PNG))
        self._copy()
        if state.run is not None:
            state.run.log_figure(fig, CURVE_PNG)
            state.run.log_artifact(self.path)
            cost = overhead(frame)
            if cost is not None:
                state.run.log_metrics(
                    {"eval/total_seconds": cost[0], "eval/overhead_fraction": cost[2]},
                    step=state.step,
                )

    # -- helpers ----------------------------------------------------------------------------

    def _plan(self, state: TrainingState) -> tuple[list[EnvTarget], pl.DataFrame, list[str]]:
        """The envs to evaluate (scoreable ones), their references, notes on the others."""
        from ldm_envs.dataset.index import read_index
        from ldm_eval.checkpoint import CheckpointProvenance
        from ldm_eval.normalize import reference_runs
        from ldm_eval.pipeline import plan_envs

        root = Path(state.dataset.root)
        if self.envs is not None:
            pairs = [(e.library, e.env_id) for e in self.envs]
            notes: list[str] = []
        else:
            trained = [EnvTarget(library=e.library, env_id=e.env_id) for e in state.dataset.envs]
            info = CheckpointProvenance(path=state.out, dataset_root=root, envs=trained)
            planned, notes = plan_envs(info)
            pairs = [(p.library, p.env_id) for p in planned]
        self.planned = len(pairs)
        try:
            runs, episodes = read_index(root)
        except FileNotFoundError as exc:
            return [], pl.DataFrame(), [*notes, f"{exc}: nothing can be scored"]
        refs = reference_runs(runs, episodes, pairs)
        usable = refs.filter(pl.col("reference_status") == "ok")
        skipped = refs.filter(pl.col("reference_status") != "ok")
        if skipped.height:
            notes.append(
                "not evaluated during training (no usable reference): "
                + ", ".join(
                    f"{r['library']}/{r['env_id']} ({r['reference_status']})"
                    for r in skipped.iter_rows(named=True)
                )
            )
        targets = [
            EnvTarget(library=r["library"], env_id=r["env_id"])
            for r in usable.iter_rows(named=True)
        ]
        return targets, refs, notes

    def _copy(self) -> None:
        if self.copy_to is None or self.path is None:
            return
        for name in (CURVE_FILE, CURVE_PNG):
            src = self.path.with_name(name)
            if src.is_file():
                atomic_write_bytes(self.copy_to / name, src.read_bytes())


def from_train_config(config: TrainConfig) -> TrainingEvaluator | None:
    """The `ldm.train_callbacks` entry point: an evaluator when `config.eval_every` is set."""
    if config.eval_every is None:
        return None
    episodes = config.eval_episodes or EvalConfig.model_fields["episodes"].default
    # one torch thread while the model acts: a few envs' steps gain nothing from more, and the
    # env workers need the cores (measured on 2 cores: 31-38 s per evaluation with torch's
    # default threads, 1-2 s with one)
    return TrainingEvaluator(EvalConfig(episodes=episodes), torch_threads=1)


# -- the figure and the report's section -----------------------------------------------------


def curve_figure(frame: pl.DataFrame, title: str = "envs at reference during training") -> Figure:
    """Share of envs at >= 80% and >= 100% of reference against transitions seen."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    rows = frame.sort("step")
    if rows.is_empty():
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    else:
        x = rows["transitions"].to_numpy()
        for col, label, color in (
            ("share_ge_80", ">= 80% of reference", "tab:blue"),
            ("share_ge_100", ">= 100% of reference", "tab:orange"),
        ):
            ax.plot(x, rows[col].to_numpy(), marker="o", ms=4, lw=1.4, color=color, label=label)
        ax.legend(loc="upper left")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("transitions seen")
    ax.set_ylabel("share of scored envs")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def _fmt_s(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def curve_html(path: str | Path, image: bytes | None = None) -> str:
    """The report's section on evaluation during training (empty string without a curve)."""
    import base64
    import html

    from ldm_eval.plots import figure_png

    frame = read_curve(path)
    if frame.is_empty():
        return ""
    png = image or figure_png(curve_figure(frame))
    cost = overhead(frame)
    assert cost is not None
    spent, total, ratio = cost

    def pct(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"

    body = "".join(
        f"<tr><td>{r['step']:,}</td><td>{r['transitions']:,}</td>"
        f"<td>{pct(r['share_ge_80'])}</td><td>{pct(r['share_ge_100'])}</td>"
        f"<td>{r['envs_scored']} / {r['envs']}</td><td>{r['eval_seconds']:.1f}</td></tr>"
        for r in frame.sort("step").iter_rows(named=True)
    )
    return (
        "<h3>Evaluation during training (the paper's Fig. 3)</h3>"
        f"<p>eval during training: {_fmt_s(spent)} of {_fmt_s(total)} ({100 * ratio:.1f}%) of "
        f"the training loop's wall time; file <code>{html.escape(str(path))}</code></p>"
        f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}' "
        "alt='share of envs at reference during training'>"
        "<table><thead><tr><th>step</th><th>transitions</th><th>&ge;80%</th><th>&ge;100%</th>"
        f"<th>envs scored</th><th>eval s</th></tr></thead><tbody>{body}</tbody></table>"
    )
