"""DDP set-up from `torchrun`'s environment: gloo on CPU, NCCL on CUDA, nothing for one process.

`torchrun --nproc_per_node N -m ldm_model.cli train ...` exports RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; a plain `ldm-model train` has none of them and runs as a world of
one, without a process group, so the single-process path has no distributed code in its way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from ldm_model.model import LDM


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    #: "gloo", "nccl", or None for a world of one (no process group).
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that logs, prints progress and writes checkpoints."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (a no-op in a world of one) and return it."""
        if self.backend is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, value: int) -> int:
        """The largest `value` over ranks (agreeing on a step to resume at)."""
        if self.backend is None:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def barrier(self) -> None:
        if self.backend is not None:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def pick_device(requested: str = "auto", *, local_rank: int = 0) -> torch.device:
    """`auto`: the local rank's GPU when CUDA is there, else the CPU.

    Raises:
        RuntimeError: CUDA was asked for and is not available.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} asked for, but CUDA is not available")
        if requested == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(requested)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group `torchrun` describes, or stand alone.

    With WORLD_SIZE > 1: NCCL when the device is CUDA, gloo otherwise; each process uses the GPU
    of its LOCAL_RANK. CPU processes share the cores: each gets `cores / local world` threads
    unless OMP_NUM_THREADS says otherwise.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is not in a world of {world}")
    dev = pick_device(device, local_rank=local_rank)
    if world == 1:
        return DistContext(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif "OMP_NUM_THREADS" not in os.environ:
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistContext(rank, world, local_rank, dev, backend)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group (if this process is in one)."""
    if ctx.backend is not None and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def wrap_ddp(module: nn.Module, ctx: DistContext, *, find_unused_parameters: bool) -> nn.Module:
    """`module` under DDP in a world of several processes; `module` itself in a world of one."""
    if ctx.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(
        module,
        device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def shard_fsdp(ldm: LDM, ctx: DistContext) -> None:
    """Shard `ldm` in place over the ranks with torch's FSDP2 `fully_shard`.

    Each decoder layer of the backbone is its own unit (its parameters are gathered just
    before it runs and freed after), the rest (embeddings, image encoder, action decoder)
    forms the root unit. The trainer calls `ldm.loss_terms`, not `forward`, so that method
    is registered to gather the root's parameters too. Parameter names do not change, so the
    optimizer's parameter order, and with it the checkpoint format, is the one of DDP.

    Raises:
        RuntimeError: this torch has no FSDP2 (`torch.distributed.fsdp.fully_shard`, 2.6+).
    """
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    except ImportError as exc:  # pragma: no cover - the lock pins a torch that has it
        raise RuntimeError(
            f"parallel 'fsdp' needs torch's FSDP2 (torch >= 2.6), this is {torch.__version__}"
        ) from exc
    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    layers: Any = ldm.backbone.layers
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(ldm, mesh=mesh)
    register_fsdp_forward_method(ldm, "loss_terms")


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_full_state(
    ldm: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full (unsharded) weights and AdamW state of an FSDP model, on rank 0's CPU.

    A collective: every rank must call it; the others get empty dicts. The optimizer state
    comes keyed by parameter index in optimizer order, as `optimizer.state_dict()` gives it
    for an unsharded model, so a checkpoint saved under FSDP is the one DDP would write.
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    # DCP types them as nested containers: they are tensors and AdamW's state dict
    model_state: Any = get_model_state_dict(ldm, options=_full_options())
    by_name: Any = get_optimizer_state_dict(ldm, optimizer, options=_full_options())
    if not model_state:
        return {}, {}
    names = [n for group in by_name["param_groups"] for n in group["params"]]
    index = {n: i for i, n in enumerate(names)}
    groups = [
        {**group, "params": [index[n] for n in group["params"]]}
        for group in by_name["param_groups"]
    ]
    state = {index[n]: values for n, values in by_name["state"].items()}
    return model_state, {"state": state, "param_groups": groups}


def load_full_state(
    ldm: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    names: list[str],
) -> None:
    """Load full weights and AdamW state (keyed by index, as saved) into an FSDP model.

    Every rank passes the full state it read; each keeps its own shard. `names` are the
    parameter names in optimizer order (what the saved indices mean).

    Raises:
        RuntimeError: the weights do not fit the model (strict: every tensor must match).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(
        ldm, cast(Any, model_state), options=StateDictOptions(full_state_dict=True)
    )
    by_name: Any = {
        "state": {names[int(i)]: values for i, values in optimizer_state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in optimizer_state["param_groups"]
        ],
    }
    # not strict: a parameter that never had a gradient (the image encoder without images)
    # has no AdamW state, as in `optimizer.state_dict()`; the names were checked on reading
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(ldm, optimizer, by_name, options=options)


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """`init_distributed` for the duration of a block."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        shutdown_distributed(ctx)


__all__ = [
    "DistContext",
    "distributed",
    "gather_full_state",
    "init_distributed",
    "load_full_state",
    "pick_device",
    "shard_fsdp",
    "shutdown_distributed",
    "wrap_ddp",
]
