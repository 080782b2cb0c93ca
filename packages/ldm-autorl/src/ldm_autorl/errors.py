"""ldm-autorl's subtree of `LDMError`: the CLIs print any of these as one `error:` line."""

from __future__ import annotations

from ldm_envs.errors import LDMError


class LDMAutoRLError(LDMError):
    """Base of every error raised by ldm-autorl."""


class CandidateError(LDMAutoRLError, ValueError):
    """A candidate config is invalid or cannot run on an env; the message names plugin and key."""


class UnknownCandidateError(CandidateError, KeyError):
    """A candidate name is not registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EmptyRankingError(LDMAutoRLError, ValueError):
    """No candidate scored in the ranking, so no reference run can be chosen."""


class RestartLimitError(LDMAutoRLError):
    """A run's env worker needed more restarts than the run allows; names run, count and cause.

    Each restart cuts the episodes of the worker's envs short; a run that keeps losing its
    worker is failing, not training, so it stops instead of recording more cut episodes.
    """


class ExportError(LDMAutoRLError):
    """An export cannot be written: nothing kept, a missing extra, an env not makeable, ..."""
