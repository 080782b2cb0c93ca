"""One vocabulary across `ldm-envs`, `ldm-autorl`, `ldm-model` and `ldm-eval` (issue 16).

The test walks the four click command trees and fails on a drift: an option spelling that is
not in `VOCABULARY` (add it there, under the concept it names, or reuse that concept's
spelling), one concept spelled two ways, a short flag with two meanings, an inspection command
not called `list` or `show`, or an old spelling visible again. Each old spelling still works for
one release and warns (`ldm_envs.cli_app`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperOption

from ldm_autorl.cli import app as autorl_app
from ldm_envs.cli import app as envs_app
from ldm_eval.cli import app as eval_app
from ldm_model.cli import app as model_app

APPS = {
    "ldm-envs": envs_app,
    "ldm-autorl": autorl_app,
    "ldm-model": model_app,
    "ldm-eval": eval_app,
}

#: Every visible option of the four CLIs, by concept: the full set of its spellings.
VOCABULARY: dict[str, frozenset[str]] = {
    concept: frozenset(spellings)
    for concept, spellings in {
        # the shared concepts of issue 16
        "library": ("--library", "-l"),
        "env": ("--env",),  # an env id filter, repeatable
        "backend": ("--backend", "-b"),
        "dataset": ("--dataset", "-d"),  # the dataset root (an ldm-autorl data root)
        "out": ("--out", "-o"),  # what a command writes: a folder, or the HTML report
        "track": ("--track", "--no-track"),  # log to MLflow
        "workers": ("--workers",),  # env worker processes (per backend, per library)
        "parallel": ("--parallel",),  # runs at the same time (ldm-autorl's local executor)
        "loader-workers": ("--loader-workers",),  # DataLoader worker processes
        "num-envs": ("--num-envs",),  # copies of an env stepped together
        "model": ("--model", "-m"),
        "config": ("--config", "-c"),
        "module": ("--module",),
        "requirement": ("--requirement", "-r"),
        # the rest, one spelling each
        **{
            name: (f"--{name}",)
            for name in (
                "actions",
                "address",
                "api",
                "attention",
                "batch-size",
                "budget",
                "candidate",
                "checkpoint-every",
                "context",
                "description",
                "device",
                "entry-point",
                "env-spec",
                "episodes",
                "exclude",
                "eval-device",
                "eval-episodes",
                "eval-every",
                "executor",
                "format",
                "fresh",
                "from-stage",
                "grad-clip",
                "include",
                "json",  # `ldm-envs list --json`: the health report (ldm_envs.health)
                "keep-checkpoints",
                "kwargs",
                "log-every",
                "lr",
                "max-episode-steps",
                "max-restarts",
                "micro-batch",
                "min-steps-per-second",
                "name",
                "only",
                "overwrite",
                "ppo-config",
                "ppo-timesteps",
                "precision",
                "python",
                "random-episodes",
                "rank-budget",
                "ranking",  # `ldm-envs check --ranking`: only the ranking subset
                "repair",
                "resamples",
                "retries",
                "rollouts",
                "rounds",
                "seconds",
                "seed",
                "seed-kwarg",
                "steps",
                "store-cache-gb",  # `ldm-model train`: the bound of the store URL's local cache
                "stop-after",
                "tag",
                "top-n",
                "torch-threads",
                "train-budget",
                "vary",
                "weight-decay",
                "weighting",
                "wrapper",
            )
        },
        **{
            name: (f"--{name}", f"--no-{name}")
            for name in (
                "allow-data-change",
                "compare-socket",
                "compile",
                "discover",
                "dry-run",
                "force",
                "fused-adamw",
                "progress",
                "random-baseline",
                "rebuild",
                "register",
                "sb3",
                "verify",
            )
        },
        # global
        "debug": ("--debug",),
        "install-completion": ("--install-completion",),
        "show-completion": ("--show-completion",),
    }.items()
}

#: Commands that only inspect: they are called `list` or `show` in every CLI.
INSPECTION = {"list", "show"}
#: The commands that do work (anything else visible is a drift, or belongs in one of these).
WORK_COMMANDS = {
    "ldm-envs": {"build", "probe", "new", "add", "check", "bench", "docker-base"},
    "ldm-autorl": {"rank", "train", "filter", "verify", "export", "run"},
    "ldm-model": {"train"},
    "ldm-eval": {"evaluate", "report", "suite", "sizes"},
}


def _group(app: typer.Typer) -> Any:
    return typer.main.get_command(app)


def _spellings(param: Any) -> frozenset[str]:
    return frozenset((*param.opts, *param.secondary_opts))


def _options() -> list[tuple[str, frozenset[str]]]:
    """(where, spellings) of every visible option, global ones included."""
    found = []
    for cli, app in APPS.items():
        group = _group(app)
        for param in group.params:
            if isinstance(param, TyperOption) and not param.hidden:
                found.append((cli, _spellings(param)))
        for name, cmd in group.commands.items():
            for param in cmd.params:
                if isinstance(param, TyperOption) and not param.hidden:
                    found.append((f"{cli} {name}", _spellings(param)))
    return found


def test_the_vocabulary_gives_each_spelling_one_concept():
    counts = Counter(s for spellings in VOCABULARY.values() for s in spellings)
    assert [s for s, n in counts.items() if n > 1] == []


def test_every_visible_option_is_in_the_vocabulary_with_all_its_spellings():
    concept_of = {s: c for c, spellings in VOCABULARY.items() for s in spellings}
    drift = []
    for where, spellings in _options():
        concepts = {concept_of.get(s) for s in spellings}
        if None in concepts:
            drift.append(f"{where}: {sorted(spellings)} is not in VOCABULARY")
        elif len(concepts) > 1:
            drift.append(f"{where}: {sorted(spellings)} mixes concepts {sorted(concepts)}")
        elif spellings != VOCABULARY[concepts.pop()]:
            drift.append(f"{where}: {sorted(spellings)} is not spelled as elsewhere")
    assert drift == []


def test_every_concept_of_the_vocabulary_is_used():
    used = {s for _, spellings in _options() for s in spellings}
    assert [c for c, spellings in VOCABULARY.items() if not spellings & used] == []


@pytest.mark.parametrize("cli", APPS)
def test_commands_are_list_show_or_work(cli):
    visible = {name for name, cmd in _group(APPS[cli]).commands.items() if not cmd.hidden}
    assert visible - INSPECTION - WORK_COMMANDS[cli] == set()
    assert "--debug" in {s for p in _group(APPS[cli]).params for s in _spellings(p)}


# -- the old spellings: hidden, still working, warning --------------------------------------------


def _renames() -> list[tuple[str, str, str]]:
    return [
        (cli, old, new)
        for cli, app in APPS.items()
        for old, new in _group(app).renamed_options.items()
    ]


def _command_with(group: Any, old: str, new: str) -> tuple[str, Any]:
    for name, cmd in group.commands.items():
        spellings = {s for p in cmd.params for s in _spellings(p)}
        if new in spellings and old not in spellings:
            return name, cmd
    raise AssertionError(f"no command has {new} and not {old}: a dead alias")


def _sample(param: Any) -> list[str]:
    """Arguments that give `param` a value: "3" reads as an int, a float, a str and a path."""
    return [] if getattr(param, "is_flag", False) else ["3"]


@pytest.mark.parametrize(("cli", "old", "new"), _renames(), ids=lambda v: str(v))
def test_an_old_option_spelling_still_works_and_warns(capsys, cli, old, new):
    group = _group(APPS[cli])
    assert old not in {s for _, spellings in _options() if _.startswith(cli) for s in spellings}
    name, cmd = _command_with(group, old, new)
    (param,) = [p for p in cmd.params if new in _spellings(p)]
    args = [old, *_sample(param)]
    for other in cmd.params:  # what the command requires besides
        if other is param or not other.required:
            continue
        args += _sample(other) if isinstance(other, TyperArgument) else [other.opts[0], "x"]
    ctx = group.make_context(cli, [name, *args])
    resolved, sub, rest = group.resolve_command(ctx, [name, *args])
    sub_ctx = sub.make_context(resolved, rest, parent=ctx)
    value = sub_ctx.params[param.name]
    if param.is_flag:
        assert value == (new in param.opts)
    else:
        assert value not in (None, (), []) and value != param.default
    assert capsys.readouterr().err.strip() == f"warning: {old} is deprecated, use {new}"


def _command_renames() -> list[tuple[str, str, str]]:
    return [
        (cli, old, new)
        for cli, app in APPS.items()
        for old, new in _group(app).renamed_commands.items()
    ]


@pytest.mark.parametrize(("cli", "old", "new"), _command_renames(), ids=lambda v: str(v))
def test_an_old_command_name_still_works_and_warns(capsys, cli, old, new):
    group = _group(APPS[cli])
    assert old not in group.commands and new in group.commands
    ctx = group.make_context(cli, [old, "--help"])
    resolved, cmd, rest = group.resolve_command(ctx, [old, "--dataset", "x"])
    assert (resolved, cmd, rest) == (new, group.commands[new], ["--dataset", "x"])
    assert capsys.readouterr().err.strip() == f"warning: {cli} {old} is deprecated, use {cli} {new}"


def test_an_old_spelling_runs_end_to_end(tmp_path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(autorl_app, ["verify", "--root", str(tmp_path / "none")])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "warning: --root is deprecated, use --dataset",
        f"error: no data root at {tmp_path / 'none'}",
    ]
