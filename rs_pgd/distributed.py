"""Distributed patch parallelism: the windows of each aggregation group are shared among torchrun ranks.

Every rank plans the same groups (same seed), takes every ``world``-th window of each group, accumulates the
gradient of its windows' centre loss divided by the *global* group normaliser, and the gradients are summed across
ranks once per group (one all-reduce per optimizer step, GUIDE condition 7), so each rank steps with the gradient a
single process would have taken. BatchNorm buffers are broadcast from rank 0 after each step (as DDP does).
Run it with ``torchrun --nproc_per_node N -m rs_pgd.cli.main fit ...``; without torchrun nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's share of a group's items (every ``world``-th, starting at ``rank``)."""
        return list(items[self.rank :: self.world])

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient across ranks (missing gradients count as zero), in one flat buffer."""
        if not self.enabled:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Make every rank's buffers (BatchNorm running statistics) equal to rank 0's."""
        if not self.enabled:
            return
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)

    def sum_array(self, array: np.ndarray, device: torch.device) -> np.ndarray:
        """Element-wise sum of a numpy array across ranks."""
        if not self.enabled:
            return array
        tensor = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.cpu().numpy().astype(array.dtype)

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank: decisions taken from a clock (time budgets, when to save) must be the
        same everywhere, or ranks would wait for each other at different places."""
        if not self.enabled:
            return bool(flag)
        tensor = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device)
        torch.distributed.broadcast(tensor, 0)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str) -> Distributed:
    """Join the torchrun job described by ``WORLD_SIZE``/``RANK`` (gloo on CPU, NCCL on CUDA), if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return Distributed()
    owns = False
    if not torch.distributed.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), owns)


def local_device(device: torch.device) -> torch.device:
    """On CUDA, each rank uses the GPU of its ``LOCAL_RANK``."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
