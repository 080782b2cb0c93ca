"""Running a stage's CLI as a subprocess, the way the suite runs ldm-autorl.

The child's output goes straight to the terminal; the command is noted in the stage record
as the user would type it. A stage runs a CLI rather than a function where a crash, a leaked
worker or a hung library must not take the suite down, and where its threads would fight the
suite's (see the `ldm_eval.suite` docstring for which stages do).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Sequence

from ldm_eval.suite.context import StageContext, StageFailure

__all__ = ["quote", "run_cli"]


def quote(args: Sequence[object]) -> str:
    """The command line a user would type for `args`."""
    return shlex.join(str(a) for a in args)


def run_cli(ctx: StageContext, shown: str, argv: list[str]) -> None:
    """Run a CLI as a subprocess, its output straight to the terminal; fail naming it.

    On an interrupt the child gets SIGINT and time to stop its own workers (the ldm-autorl
    CLI stops its task processes) before it is killed.
    """
    ctx.command(shown)
    env = dict(os.environ)
    # Parallel SB3 runs and their env workers share the cores: torch's OpenMP threads in each
    # run only fight over them (measured: the quickstart's ranking ran ~20x slower per step).
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.Popen(argv, env=env)
    except OSError as exc:
        raise StageFailure(f"could not start `{shown}`: {exc}") from None
    try:
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if code != 0:
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise StageFailure(
            f"`{shown}` ended with {how} (its output is above)\n  argv: {quote(argv)}"
        )
