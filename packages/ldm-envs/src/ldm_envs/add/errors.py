"""The refusal of `ldm-envs add`."""

from __future__ import annotations

from ldm_envs.errors import LDMEnvsError


class AddError(LDMEnvsError):
    """`ldm-envs add` refused; the message says why, and nothing was written."""
