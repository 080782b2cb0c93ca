"""The probe stage's config: how many random steps `ldm-envs check` takes through each env.

`ldm-envs check`'s options are derived from it (`ldm_envs.cli_options`) and the suite's
`probe:` section embeds it, so the defaults and help texts are written here once. The backend
is not a field: it is chosen per library (`--backend`, a suite library's `backend`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ProbeConfig"]


class ProbeConfig(BaseModel):
    """The random-rollout check after the spaces are probed."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=200, gt=0, description="batched random steps per env")
    num_envs: int = Field(default=2, gt=0, description="copies of each env")
