"""Device names, checked where the user gives them, before any work starts.

Torch parses a device string only when a tensor first moves: in an evaluation that is after
the venv build and the first rollouts, in a suite after hours of earlier stages. `check_device`
refuses a mistyped name (`cdua`) or a device this machine lacks up front, naming the field.
"""

from __future__ import annotations

import re

from ldm_envs.errors import BadInputError

#: What the project runs on: the CPU, the current CUDA device, or one by index.
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(
    value: str, *, field: str = "device", allow_auto: bool = False, available: bool = True
) -> str:
    """Refuse a device name torch would refuse later, or a CUDA device this machine lacks.

    Args:
        value: `cpu`, `cuda`, `cuda:N`, or `auto` where `allow_auto` (CUDA when available).
        field: how the caller names the setting (`--device`, `eval.device`).
        allow_auto: whether `auto` is a choice here.
        available: also refuse a CUDA device that is not available (imports torch); off where
            the value is only recorded (a checkpoint's config read on another machine).

    Returns:
        The name, unchanged.

    Raises:
        BadInputError: naming `field`, the value and the choices.
    """
    if allow_auto and value == "auto":
        return value
    if not _DEVICE.match(value):
        choices = ("auto, " if allow_auto else "") + "cpu, cuda or cuda:N"
        raise BadInputError(field, f"unknown device {value!r}; give {choices}")
    if available and value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BadInputError(
                field, f"device {value!r} asked for, but CUDA is not available here; use cpu"
            )
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BadInputError(
                field,
                f"device {value!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)",
            )
    return value


def validate_device(value: str, *, allow_auto: bool = False, available: bool = True) -> str:
    """`check_device` for a pydantic field validator: the reason as a plain `ValueError`.

    Pydantic puts the field's location in front of it, so the message does not repeat it.

    Raises:
        ValueError: the device is unknown or (with `available`) missing here.
    """
    try:
        return check_device(value, allow_auto=allow_auto, available=available)
    except BadInputError as exc:
        raise ValueError(exc.reason) from None


__all__ = ["check_device", "validate_device"]
