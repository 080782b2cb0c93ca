"""Rich consoles whose tables stay readable when the output goes to a file or a pipe.

Rich sizes its output to the terminal, and to 80 columns when it finds none: `ldm-autorl filter
... > log` then folded its 13-column table to one character per line. The CLIs make their
consoles here: on a terminal Rich still measures it; otherwise the width is `$COLUMNS` when
set, else `REDIRECTED_WIDTH`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from rich.console import Console

#: Columns of a console whose stream is not a terminal (and `$COLUMNS` is not set): wide
#: enough for the widest table of the CLIs, narrow enough to read in an editor.
REDIRECTED_WIDTH = 160


def console_width(stream: TextIO | None) -> int | None:
    """The width for a console on `stream`: None on a terminal (Rich measures it).

    Off a terminal: `$COLUMNS` when it holds a positive number, else `REDIRECTED_WIDTH`.
    """
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        on_terminal = stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-less file
        on_terminal = False
    return None if on_terminal else REDIRECTED_WIDTH


def make_console(*, stderr: bool = False, **options: Any) -> Console:
    """A `rich.console.Console` (on stdout, or stderr) with `console_width` unless given.

    Args:
        stderr: write to stderr instead of stdout.
        **options: passed to `Console` (an explicit `width` wins).
    """
    if "width" not in options:
        stream = options.get("file") or (sys.stderr if stderr else sys.stdout)
        options["width"] = console_width(stream)
    return Console(stderr=stderr, **options)


__all__ = ["REDIRECTED_WIDTH", "console_width", "make_console"]
