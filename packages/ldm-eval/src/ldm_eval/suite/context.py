"""What a stage gets while it runs: the suite, the record, where to print, what it reports.

A stage is a function of a `StageContext`: it notes the commands it runs (or their CLI
equivalents) and the outputs later stages and the report need, and stops with a
`StageFailure` whose message the runner records and turns into a `StageError`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from ldm_eval.suite.config import Suite
from ldm_eval.suite.record import SuiteRecord

__all__ = ["StageContext", "StageFailure"]


class StageFailure(Exception):
    """Raised inside a stage to stop it with a message (turned into a StageError)."""


class StageContext:
    """What the stages share while they run: the suite, the record, where to print."""

    def __init__(self, suite: Suite, record: SuiteRecord, console: Console) -> None:
        self.suite = suite
        self.record = record
        self.console = console
        self.commands: list[str] = []
        self.outputs: dict[str, str] = {}
        #: The evaluation report's body, kept so the report can be redrawn with its own time.
        self.eval_html: str | None = None
        #: the suite's envs and their references (`dataset.suite_references`)
        self.references: Any = None

    def command(self, text: str) -> str:
        """Note (and show) a command the stage runs, or the CLI equivalent of what it does."""
        self.commands.append(text)
        self.console.print(f"[dim]$ {escape(text)}[/]", highlight=False, soft_wrap=True)
        return text
