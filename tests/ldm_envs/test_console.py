"""Rich output off a terminal: tables keep their columns instead of folding to 80."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.table import Table

from ldm_envs.console import REDIRECTED_WIDTH, console_width, make_console


def thirteen_columns() -> Table:
    """As wide as `ldm-autorl filter`'s decision table."""
    table = Table(title="filter decisions")
    names = ["env_id", "candidate", "seed", "budget", "kept", "reason", "first10", "last10"]
    names += ["p", "threshold", "random", "zoo_best", "pct_of_zoo"]
    for name in names:
        table.add_column(name)
    table.add_row(*[f"{name}-value"[:8] for name in names])
    return table


def test_off_a_terminal_the_width_is_160_or_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()  # not a tty, as `> log` or a pipe
    console = make_console(file=out)
    assert console.width == REDIRECTED_WIDTH
    console.print(thirteen_columns())
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if "env_id" in line)
    assert "pct_of_zoo" in header and "threshold" in header  # one line, nothing folded
    assert max(len(line) for line in lines) <= REDIRECTED_WIDTH
    monkeypatch.setenv("COLUMNS", "200")
    assert make_console(file=io.StringIO()).width == 200
    assert make_console(file=io.StringIO(), width=90).width == 90  # an explicit width wins


def test_a_terminal_is_left_to_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert console_width(Tty()) is None
    assert console_width(None) == REDIRECTED_WIDTH


def test_a_cli_table_piped_to_a_file_keeps_its_columns(tmp_path) -> None:
    """`ldm-model list > log` with no terminal at all (stdin, stdout, stderr redirected)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    log = tmp_path / "log"
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "ldm_model.cli", "list"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=env,
            check=True,
            timeout=120,
        )
    text = log.read_text()
    # at 80 columns Rich cut these to "734,1…" and "diff…"
    assert "734,162,080" in text and "difference" in text and "token dim" in text
