"""Pydantic models of the Gymnasium spaces ldm supports, with a lossless round trip.

Manifests must describe spaces without importing the env library, so spaces are plain data here
and only become `gymnasium.spaces` objects on demand. Dict/Tuple spaces are flattened by the
worker before they reach the host; what the host sees is always one of the four models below.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ldm_envs.errors import SpaceError

if TYPE_CHECKING:  # imported where used: the model's GPU path runs without gymnasium
    import gymnasium as gym

#: Paper limits (LDM-v0 section 3.3): flattened observation dims, images apart.
MAX_OBS_DIMS = 128
#: Paper limits: action dims after flattening (a Discrete action is one dim).
MAX_ACTION_DIMS = 28

_Bound = float | list[float]


class _SpaceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    @property
    def flat_dim(self) -> int:
        """Number of scalar values one sample of this space holds."""
        raise NotImplementedError

    @property
    def is_image(self) -> bool:
        """Whether the model should treat samples as images rather than vectors."""
        return False

    def to_gymnasium(self) -> gym.Space[Any]:
        """Build the equivalent `gymnasium.spaces` object."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short human-readable summary for tables."""
        raise NotImplementedError


class BoxSpace(_SpaceModel):
    """A box of any shape; uint8 HxWxC counts as an image.

    Bounds are a scalar when every dimension shares it, else a flat list in C order.
    """

    type: Literal["box"] = "box"
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: _Bound
    high: _Bound

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        try:
            dt = np.dtype(value)
        except TypeError as exc:
            raise ValueError(f"unknown dtype {value!r}") from exc
        if dt.kind not in "fiub":
            raise ValueError(f"dtype {value!r} is not numeric")
        return dt.name

    @model_validator(mode="after")
    def _bounds_match_shape(self) -> BoxSpace:
        size = math.prod(self.shape)
        if any(d <= 0 for d in self.shape):
            # a zero dimension is a box without values: nothing to observe or act on
            raise ValueError(f"shape {list(self.shape)} has a dimension below 1")
        dt = np.dtype(self.dtype)
        for name in ("low", "high"):
            bound = getattr(self, name)
            if isinstance(bound, list) and len(bound) != size:
                raise ValueError(
                    f"{name} has {len(bound)} values but shape {self.shape} holds {size}"
                )
            values = np.asarray(bound, dtype=np.float64)
            if np.isnan(values).any():
                raise ValueError(f"{name} holds NaN; an unbounded dimension is -inf/inf (.inf)")
            if dt.kind == "f":
                # checked before any cast, which would overflow to inf with a NumPy warning
                limit = float(np.finfo(dt).max)
                finite = values[np.isfinite(values)]
                if finite.size and float(np.abs(finite).max()) > limit:
                    worst = float(finite[np.argmax(np.abs(finite))])
                    raise ValueError(
                        f"{name} {worst:g} is beyond the range of {dt.name} (+-{limit:.4g}); "
                        "write -inf/inf (.inf in YAML) for an unbounded dimension"
                    )
        if np.any(self.low_array() > self.high_array()):
            raise ValueError("low exceeds high in some dimension")
        return self

    def low_array(self) -> np.ndarray:
        """Lower bounds broadcast to the shape, in the space's dtype."""
        return _bound_array(self.low, self.shape, self.dtype)

    def high_array(self) -> np.ndarray:
        """Upper bounds broadcast to the shape, in the space's dtype."""
        return _bound_array(self.high, self.shape, self.dtype)

    @property
    def flat_dim(self) -> int:
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return self.dtype == "uint8" and len(self.shape) == 3

    def to_gymnasium(self) -> gym.spaces.Box:
        import gymnasium as gym

        return gym.spaces.Box(
            low=self.low_array(),
            high=self.high_array(),
            shape=self.shape,
            dtype=np.dtype(self.dtype),
        )

    def describe(self) -> str:
        kind = "image" if self.is_image else "box"
        return f"{kind}{list(self.shape)} {self.dtype}"


class DiscreteSpace(_SpaceModel):
    """`n` categories numbered from `start`."""

    type: Literal["discrete"] = "discrete"
    n: int = Field(gt=0)
    start: int = 0

    @property
    def flat_dim(self) -> int:
        return 1

    def to_gymnasium(self) -> gym.spaces.Discrete:
        import gymnasium as gym

        return gym.spaces.Discrete(self.n, start=self.start)

    def describe(self) -> str:
        return (
            f"discrete({self.n})" if self.start == 0 else f"discrete({self.n}, start={self.start})"
        )


class MultiDiscreteSpace(_SpaceModel):
    """One categorical value per entry of `nvec` (flat only)."""

    type: Literal["multi_discrete"] = "multi_discrete"
    nvec: list[int]
    start: list[int] | None = None

    @model_validator(mode="after")
    def _valid(self) -> MultiDiscreteSpace:
        if not self.nvec or any(n <= 0 for n in self.nvec):
            raise ValueError(f"nvec must be non-empty and positive, got {self.nvec}")
        if self.start is not None and len(self.start) != len(self.nvec):
            raise ValueError("start must have one entry per nvec entry")
        return self

    @property
    def flat_dim(self) -> int:
        return len(self.nvec)

    def to_gymnasium(self) -> gym.spaces.MultiDiscrete:
        import gymnasium as gym

        start = None if self.start is None else np.asarray(self.start, dtype=np.int64)
        return gym.spaces.MultiDiscrete(np.asarray(self.nvec, dtype=np.int64), start=start)

    def describe(self) -> str:
        return f"multi_discrete{self.nvec}"


class MultiBinarySpace(_SpaceModel):
    """`n` independent bits."""

    type: Literal["multi_binary"] = "multi_binary"
    n: int = Field(gt=0)

    @property
    def flat_dim(self) -> int:
        return self.n

    def to_gymnasium(self) -> gym.spaces.MultiBinary:
        import gymnasium as gym

        return gym.spaces.MultiBinary(self.n)

    def describe(self) -> str:
        return f"multi_binary({self.n})"


#: Any of the four space models: the type every package annotates a space with.
SpaceModel = BoxSpace | DiscreteSpace | MultiDiscreteSpace | MultiBinarySpace
#: A space field of a pydantic model: the union, told apart by its `type`.
Space = Annotated[SpaceModel, Field(discriminator="type")]


def _bound_array(bound: _Bound, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    arr = np.asarray(bound, dtype=np.float64)
    arr = np.broadcast_to(arr, (math.prod(shape),)) if arr.ndim == 0 else arr
    dt = np.dtype(dtype)
    if dt.kind in "iub":
        info = np.iinfo(dt) if dt.kind != "b" else None
        lo, hi = (info.min, info.max) if info is not None else (0, 1)
        arr = np.clip(arr, lo, hi)
    return arr.reshape(shape).astype(dt)


def _compress(values: np.ndarray) -> _Bound:
    flat = values.astype(np.float64).ravel()
    if flat.size and np.all(flat == flat[0]):
        return float(flat[0])
    return [float(v) for v in flat]


def from_gymnasium(
    space: gym.Space[Any],
) -> SpaceModel:
    """Describe a `gymnasium.spaces` object as a model.

    Raises:
        SpaceError: for space types the project does not support (Dict/Tuple must be flattened by
            the worker first, Text/Graph/Sequence are not supported).
    """
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return BoxSpace(
            shape=tuple(int(d) for d in space.shape),
            dtype=np.dtype(space.dtype).name,
            low=_compress(space.low),
            high=_compress(space.high),
        )
    if isinstance(space, gym.spaces.Discrete):
        return DiscreteSpace(n=int(space.n), start=int(space.start))
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise SpaceError(f"MultiDiscrete with shape {space.nvec.shape} is not flat")
        start = [int(s) for s in space.start]
        return MultiDiscreteSpace(
            nvec=[int(n) for n in space.nvec], start=start if any(start) else None
        )
    if isinstance(space, gym.spaces.MultiBinary):
        return MultiBinarySpace(n=math.prod(np.atleast_1d(space.n).tolist()))
    raise SpaceError(
        f"unsupported space {type(space).__name__}: ldm supports Box, Discrete, MultiDiscrete "
        "and MultiBinary (Dict/Tuple are flattened in the worker unless they hold an image)"
    )


def check_limits(
    observation: SpaceModel,
    action: SpaceModel,
    *,
    where: str = "",
) -> None:
    """Refuse spaces beyond the paper's tokenization limits.

    Raises:
        SpaceError: naming `where` (usually library and env id) and the offending size.
    """
    prefix = f"{where}: " if where else ""
    if not observation.is_image and observation.flat_dim > MAX_OBS_DIMS:
        raise SpaceError(
            f"{prefix}observation has {observation.flat_dim} dims after flattening; "
            f"the limit is {MAX_OBS_DIMS} (images apart)"
        )
    if action.is_image:
        raise SpaceError(f"{prefix}image action spaces are not supported")
    if action.flat_dim > MAX_ACTION_DIMS:
        raise SpaceError(
            f"{prefix}action has {action.flat_dim} dims; the limit is {MAX_ACTION_DIMS}"
        )


def space_from_dict(
    data: dict[str, Any],
) -> SpaceModel:
    """Validate a plain dict (from a manifest or the worker) into a space model."""
    from pydantic import TypeAdapter

    return TypeAdapter(Space).validate_python(data)
