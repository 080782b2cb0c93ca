"""The episode rules both the writer (on append) and the reader (in `verify`) enforce."""

from __future__ import annotations

import numpy as np


class _EpisodeChecker:
    """Incremental check of the episode rules over consecutive chunks of rows.

    Rules: `step` >= 0 and +1 from row to row within an episode; a row that ends an episode
    (terminated or truncated) is the last of its block; an episode id never reappears after
    another episode's rows.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.prev: tuple[int, int, bool] | None = None  # episode, step, done of the last row
        self.seen: set[int] = set()

    def feed(self, episode: np.ndarray, step: np.ndarray, done: np.ndarray) -> str | None:
        """Check a chunk; return what is wrong (naming the row) or None."""
        n = len(episode)
        if n == 0:
            return None
        base = self.rows
        if (step < 0).any():
            i = int(np.argmax(step < 0))
            return f"row {base + i}: negative step {int(step[i])}"
        if self.prev is None:
            prev_ep = np.concatenate([[episode[0] - 1], episode[:-1]])
            prev_step = np.concatenate([[0], step[:-1]])
            prev_done = np.concatenate([[False], done[:-1]])
        else:
            pe, ps, pd = self.prev
            prev_ep = np.concatenate([[pe], episode[:-1]])
            prev_step = np.concatenate([[ps], step[:-1]])
            prev_done = np.concatenate([[pd], done[:-1]])
        new = episode != prev_ep
        if self.prev is None:
            new[0] = True
        cont = ~new
        bad = cont & prev_done
        if bad.any():
            i = int(np.argmax(bad))
            return (
                f"row {base + i}: episode {int(episode[i])} goes on after a terminated/"
                "truncated row"
            )
        bad = cont & (step != prev_step + 1)
        if bad.any():
            i = int(np.argmax(bad))
            return (
                f"row {base + i}: step {int(step[i])} follows step {int(prev_step[i])} "
                f"in episode {int(episode[i])}"
            )
        fresh: set[int] = set()
        for k in np.flatnonzero(new).tolist():
            ep = int(episode[k])
            if ep in self.seen or ep in fresh:
                return (
                    f"row {base + k}: episode {ep} reappears after other episodes "
                    "(an episode must be one contiguous block of rows)"
                )
            fresh.add(ep)
        self.seen.update(fresh)
        self.rows += n
        self.prev = (int(episode[-1]), int(step[-1]), bool(done[-1]))
        return None


def _restart_problem(restarted: np.ndarray, done: np.ndarray, base: int) -> str | None:
    """A `restarted` row that does not end its episode (the restart is what ended it)."""
    bad = restarted & ~done
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return f"row {base + i}: restarted is set on a row that ends no episode"
