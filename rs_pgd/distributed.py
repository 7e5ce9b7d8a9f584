"""Distributed patch parallelism: the windows of each aggregation group are shared among torchrun ranks.

Every rank plans the same groups (same seed), takes every ``world``-th window of each group, accumulates the
gradient of its windows' centre loss divided by the *global* group normaliser, and the gradients are summed across
ranks once per group (one all-reduce per optimizer step, GUIDE condition 7), so each rank steps with the gradient a
single process would have taken. BatchNorm buffers are broadcast from rank 0 after each step (as DDP does).

No rank is left waiting: before each gradient all-reduce and after each checkpoint write every rank tells the others
whether it failed (:meth:`Distributed.check`: one all-reduce of a status row per rank), so a NaN loss or an
exception on one rank stops every rank with the failing rank's one-line error; a collective that fails because a
peer process died becomes a one-line :class:`~rs_pgd.errors.DistributedError`.
Run it with ``torchrun --nproc_per_node N -m rs_pgd.cli.main fit ...``; without torchrun nothing changes.

Prediction under torchrun (:class:`RowExchange`): the grid rows are dealt round-robin to the ranks; every rank runs
the model on the windows of its rows, and the other ranks send each finished row's window centres (all the
stitcher reads) to rank 0, which stitches every row in grid order with the one-process code and alone writes the
outputs. Rank 0 keeps one posted receive per other rank, so each may run one row ahead; memory stays one row of
centres per rank. The output is byte for byte the one-process output (batches never straddle grid rows, on one
process or many, so every window meets the model in the same batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

STATUS_BYTES = 384
"""Bytes of a failing rank's one-line error that :meth:`Distributed.check` passes to the other ranks."""


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

    def check(self, error: BaseException | None = None, device: torch.device | None = None) -> None:
        """Tell every rank whether this one failed (``error``) and learn whether another did; every rank calls it at
        the same point. If any rank failed, each failing rank raises its own ``error`` and the others a
        :class:`~rs_pgd.errors.TrainingError` that quotes the first failing rank's one-line message."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        status = torch.zeros((self.world, STATUS_BYTES + 1), dtype=torch.uint8)
        if error is not None:
            text = _first_line(error).encode("utf-8", "replace")[:STATUS_BYTES]
            status[self.rank, 0] = 1
            status[self.rank, 1 : 1 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        status = status.to(device or "cpu")
        self._collective(lambda: torch.distributed.all_reduce(status), "exchange its status")
        status = status.cpu()
        if error is not None:
            raise error
        failed = [r for r in range(self.world) if int(status[r, 0])]
        if failed:
            from rs_pgd.errors import TrainingError

            text = bytes(status[failed[0], 1:].tolist()).rstrip(b"\0").decode("utf-8", "replace")
            raise TrainingError(f"rank {failed[0]} stopped: {text}")

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient across ranks (missing gradients count as zero), in one flat buffer."""
        if not self.enabled:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self._collective(lambda: torch.distributed.all_reduce(flat), "sum the gradients")
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
            self._collective(lambda b=buffer: torch.distributed.broadcast(b, 0), "receive rank 0's buffers")

    def sum_array(self, array: np.ndarray, device: torch.device) -> np.ndarray:
        """Element-wise sum of a numpy array across ranks."""
        if not self.enabled:
            return array
        tensor = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float64, device=device)
        self._collective(lambda: torch.distributed.all_reduce(tensor), "sum values across ranks")
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
            self._collective(torch.distributed.barrier, "wait for the other ranks")

    def _collective(self, action, what: str):
        """Run a collective; a peer that stopped (its own error says why) becomes a one-line DistributedError."""
        try:
            return action()
        except RuntimeError as exc:  # gloo: "Connection closed by peer"; NCCL: its own errors, also RuntimeErrors
            from rs_pgd.errors import DistributedError

            raise DistributedError(f"rank {self.rank} could not {what} ({_peer_problem(exc)}); another rank "
                                   "stopped, see its error") from None

    def close(self) -> None:
        if self.enabled and self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str, backend: str | None = None) -> Distributed:
    """Join the torchrun job described by ``WORLD_SIZE``/``RANK`` (gloo on CPU, NCCL on CUDA, or ``backend``), if
    there is one."""
    world = world_size()
    if world <= 1 or not torch.distributed.is_available():
        return Distributed()
    owns = False
    if not torch.distributed.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        torch.distributed.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
        owns = True
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), owns)


def world_size() -> int:
    """The number of torchrun ranks (``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class RowExchange:
    """Predict's grid rows shared among torchrun ranks; rank 0 gathers the window centres and stitches.

    Parameters
    ----------
    dist : Distributed
        This rank's place (gloo: the rows travel as CPU tensors, also between GPU ranks).
    grid : rs_pgd.grid.WindowGrid
    channels : int
        Channels of a window output (classes + the validity channel).
    """

    def __init__(self, dist: Distributed, grid, channels: int):
        self.dist = dist
        self.grid = grid
        self.channels = int(channels)
        self.rows, self.cols = grid.shape

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def owner(self, row: int) -> int:
        return row % self.dist.world

    @property
    def mine(self) -> list[int]:
        """Window indexes of this rank's rows, in grid order."""
        return [row * self.cols + col for row in range(self.dist.rank, self.rows, self.dist.world)
                for col in range(self.cols)]

    def _row_buffer(self) -> torch.Tensor:
        tile = self.grid.tile
        return torch.empty((self.cols, self.channels, tile, tile), dtype=torch.float32)

    def send(self, outputs) -> None:
        """On ranks other than 0: send the centres of each finished row of ``(window index, output)`` pairs."""
        row = self._row_buffer()
        filled = 0
        for index, output in outputs:
            window = self.grid.window(index)
            row[window.grid_col] = torch.from_numpy(np.ascontiguousarray(output[(slice(None), *window.centre_slice)]))
            filled += 1
            if filled == self.cols:
                self._talk(lambda: torch.distributed.send(row, dst=0), "send a row to rank 0")
                filled = 0

    def gather(self, outputs):
        """On rank 0: every window's ``(window index, output)`` in grid order, its own from ``outputs``, the other
        ranks' received (centres in a full-size window, margins zero: the stitcher reads only centres)."""
        local = iter(outputs)
        pending = {}
        next_row = {rank: rank for rank in range(1, self.dist.world)}

        def post(rank):
            if next_row[rank] < self.rows:
                buffer = self._row_buffer()
                work = self._talk(lambda: torch.distributed.irecv(buffer, src=rank), f"receive from rank {rank}")
                pending[rank] = (work, buffer)
                next_row[rank] += self.dist.world

        for rank in next_row:
            post(rank)
        size = self.grid.window_size
        window_out = np.zeros((self.channels, size, size), dtype=np.float32)
        for row in range(self.rows):
            owner = self.owner(row)
            if owner == 0:
                for _ in range(self.cols):
                    yield next(local)
                continue
            work, buffer = pending.pop(owner)
            self._talk(work.wait, f"receive row {row} from rank {owner}")
            received = buffer.numpy()
            for col in range(self.cols):
                window = self.grid.window(row * self.cols + col)
                window_out[(slice(None), *window.centre_slice)] = received[col]
                yield window.index, window_out
            post(owner)

    def total(self, count: int) -> int:
        """The sum of ``count`` over the ranks (every rank calls it once, at the end)."""
        tensor = torch.tensor([count], dtype=torch.int64)
        self._talk(lambda: torch.distributed.all_reduce(tensor), "sum the window counts")
        return int(tensor.item())

    def _talk(self, action, what: str):
        return self.dist._collective(action, what)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def _peer_problem(exc: BaseException) -> str:
    """A short reason for a failed collective, without the library's source paths."""
    text = str(exc)
    for needle, reason in (("Connection closed", "the connection closed"), ("Connection reset", "the connection was reset"),
                           ("imed out", "timed out"), ("Broken pipe", "the connection broke")):
        if needle in text:
            return reason
    return _first_line(exc)[:120]


def local_device(device: torch.device) -> torch.device:
    """On CUDA, each rank uses the GPU of its ``LOCAL_RANK``."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
