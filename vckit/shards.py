"""Batch conversion across processes and machines: which files are this process's.

Under ``torchrun`` (or any launcher that sets ``RANK`` and ``WORLD_SIZE``)
the ranks join one gloo process group, each takes every ``WORLD_SIZE``-th
job of the batch starting at its ``RANK``, and rank 0 prints one summary
for all. ``--shard I/N`` does the same without a launcher or a group (a
scheduler's array job, one process per task, ``I`` from 0 to ``N - 1``),
and each shard prints its own summary. The jobs are dealt out from the full,
sorted list, before the outputs already there are left out, so a rerun after
a kill gives each process the same files and each converts only its rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int = 0  # this process's share: jobs[index::count]
    count: int = 1
    group: bool = False  # the processes joined a process group (torchrun): the counts are summed, rank 0 reports
    local_index: int = 0  # the process on this machine (LOCAL_RANK): its GPU
    local_count: int = 1  # processes on this machine: they share its cores

    def take(self, jobs: Sequence[T]) -> list[T]:
        return list(jobs[self.index :: self.count])

    @property
    def reports(self) -> bool:
        """Whether this process prints the batch's summary (every shard without a group; rank 0 with one)."""
        return not self.group or self.index == 0

    def label(self) -> str:
        """What the group's one summary adds: " by 2 processes" (shards say who they are with :meth:`prefix`)."""
        return f" by {self.count} processes" if self.group and self.count > 1 else ""

    def prefix(self) -> str:
        return f"shard {self.index}/{self.count}: " if self.count > 1 and not self.group else ""


def shard_arg(text: str) -> tuple[int, int]:
    """argparse type of ``--shard I/N``: this is task ``I`` (0 to N-1) of ``N``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, as 0/4 for the first of four tasks, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"the task I of I/N must be between 0 and N-1, got {text}")
    return i, n


def current_shard(asked: tuple[int, int] | None) -> Shard:
    """``--shard`` if given, else the launcher's ``RANK``/``WORLD_SIZE`` (joining their process group), else all of it."""
    if asked is not None:
        return Shard(asked[0], asked[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # the counts travel over gloo whatever device converts
    return Shard(int(os.environ["RANK"]), world, True, int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def device_for(shard: Shard, device: str) -> str:
    """The device of this process: its own GPU under a launcher with ``auto`` or ``cuda``, else ``device``."""
    if shard.group and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{shard.local_index % torch.cuda.device_count()}"
    return device


def share_cores(shard: Shard) -> None:
    """Processes on one machine split its cores: each takes its share of torch's threads."""
    if shard.local_count > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // shard.local_count))


def summed(shard: Shard, counts: list[int]) -> list[int]:
    """``counts`` summed over the group's processes (as they are without a group)."""
    if not shard.group:
        return counts
    import torch.distributed as dist

    t = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(t)
    return [int(x) for x in t]


def leave(shard: Shard) -> None:
    if shard.group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
