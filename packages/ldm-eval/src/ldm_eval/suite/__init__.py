"""The whole pipeline from one suite file: probe -> autorl -> train -> eval -> report.

A suite file (YAML) names the env libraries with their AutoRL budgets, the model config and the
evaluation protocol. `run_suite` runs its stages in order:

- `probe`: build each library's isolated environment, ask the real library for its spaces and
  compare them with the manifest (a mismatch stops here, not hours later), then a short
  random-rollout check of the suite's envs.
- `autorl`: per library, `ldm-autorl rank`, `train`, `filter` and `dataset`, then one MLflow run
  per library in `ldm-dataset/<library>` describing what the index holds.
- `train`: the LDM on the suite's envs, with `model.eval_every` the paper's protocol every K
  steps (a callback of the trainer).
- `eval`: the paper's protocol on the checkpoint, the random baseline beside it.
- `report`: one HTML file: the stages with their wall times, the dataset, then the evaluation
  report.

Each stage calls what its own command runs, so a stage and its command cannot drift apart:
`probe` the functions of `ldm-envs probe` and `ldm-envs check`, `train` those of
`ldm-model train`, `eval` those of `ldm-eval evaluate`, `report` those of `ldm-eval report`.
All of them run in this process except `autorl`, which runs the `ldm-autorl` CLI as
subprocesses (ldm-autorl is a dependency of this package all the same): hours of SB3 runs with
their own worker pools, torch threads and third-party algorithm plugins, whose crash or leak
must leave the suite able to record the stage and resume it. The others already isolate what
may crash (env workers run in their own processes), and in this process they share the model
and the MLflow store without starting a second interpreter.

Why a stage record: every stage is resumable on its own (finished runs, checkpoints and rollouts
are never redone), but even a no-op resume costs minutes (processes, envs, MLflow). The record
`<suite folder>/stages.json` (written atomically) holds each stage's status, start, end and wall
time, and a fingerprint of the suite fields the stage depends on; a re-run skips a stage that
finished with the same fingerprint. A stage whose inputs changed runs again, resuming whatever
of it is still valid. `--from-stage S` runs S and every later stage again; `--only S` runs S
alone.

MLflow: besides the runs every stage logs in its own experiments, the suite has a run in
`ldm-suite/<name>` with one nested run per stage (wall time, commands, status) and the report,
`stages.json` and the suite file as artifacts.

Modules: `config` (the suite file), `record` (`stages.json`), `tracker` (the suite's MLflow
run), `context` (what a stage gets), `commands` (a CLI as a subprocess), `dataset` (the index
read for the suite's envs), `stages/` (one module per stage), `html` (the report), `runner`
(sequencing, the summary).
"""

from __future__ import annotations

from ldm_eval.errors import StageError, SuiteError
from ldm_eval.suite.config import (
    STAGES,
    EvalSection,
    LibraryConfig,
    ModelSection,
    ProbeSection,
    Suite,
    load_suite,
)
from ldm_eval.suite.record import StageRecord, SuiteRecord
from ldm_eval.suite.runner import SuiteOutcome, run_suite

# the suite.py-era private names, still imported by callers (tests/ldm_eval/test_training_curve)
from ldm_eval.suite.stages.train import model_key as _model_key  # noqa: F401
from ldm_eval.suite.stages.train import train_config as _train_config  # noqa: F401

__all__ = [
    "STAGES",
    "EvalSection",
    "LibraryConfig",
    "ModelSection",
    "ProbeSection",
    "StageError",
    "StageRecord",
    "Suite",
    "SuiteError",
    "SuiteOutcome",
    "SuiteRecord",
    "load_suite",
    "run_suite",
]
