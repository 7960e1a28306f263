"""Running an eval CLI's samples over several processes (`accelerate launch`, `torchrun`) and merging on the main one.

Process i of n takes samples i, i + n, i + 2n, ... of the selected list (a stride spreads long and short samples
evenly), writes its records to `<jsonl>.part<i>of<n>` as they finish (they survive an interrupted run), and at the
end every process hands its records and sums to the main process, which writes the JSONL in the original sample
order and the summary exactly as one process would have. With one process nothing changes: no accelerate import,
records go straight to the JSONL.

    accelerate launch --num_processes 4 -m eval.cnn_text --target ... --out results/cnn.json      # one GPU each
    accelerate launch --multi_gpu --num_processes 2 -m eval.cnn_text --device cpu ...              # CPU, gloo

On CPU, `accelerate launch --cpu` starts a single process unless MPI is set up (`--mpirun_hostfile`); `--multi_gpu`
starts the processes with torchrun, and `PartialState(cpu=True)` then joins them over gloo (so does
`torchrun --nproc-per-node 2 -m eval.cnn_text ...`).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from eval.results import write_jsonl

T = TypeVar("T")
D = TypeVar("D")

#: a record and its sample's position in the selected list (several records may share a position)
Placed = tuple[int, dict[str, Any]]


def world_size() -> int:
    """Processes in this launch: WORLD_SIZE as set by torchrun / accelerate launch, 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device() -> str | None:
    """`cuda:<LOCAL_RANK>` for a process of a multi-process launch on a CUDA machine, else None (default device)."""
    if world_size() <= 1:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


@dataclass(frozen=True)
class Shard:
    """This process's share of the samples: process `index` of `count`."""

    index: int = 0
    count: int = 1
    state: Any = None  # accelerate's PartialState when count > 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """(position, item) for every `count`-th item from `index` on."""
        return [(i, items[i]) for i in range(self.index, len(items), self.count)]

    def part(self, path: Path) -> Path:
        """Where this process appends its records while it runs: `path` itself when alone."""
        if self.count == 1:
            return path
        return path.with_name(f"{path.name}.part{self.index}of{self.count}")

    def gather(self, local: T) -> list[T] | None:
        """Every process's `local`, in process order, on the main process; None on the others."""
        if self.count == 1:
            return [local]
        from accelerate.utils import gather_object

        everything = gather_object([local])
        return list(everything) if self.is_main else None

    def label(self, name: str) -> str:
        """A progress-bar name that says which process it is."""
        return name if self.count == 1 else f"{name}[{self.index}/{self.count}]"


def join(device: str | None = None) -> Shard:
    """The current process's Shard; under a multi-process launch this joins the process group (`merge` leaves it).

    `device` is the CLI's --device: 'cpu' (or a machine without CUDA) joins over gloo."""
    if world_size() <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return Shard(state.process_index, state.num_processes, state)


def in_order(parts: Sequence[Sequence[Placed]]) -> list[dict[str, Any]]:
    """All processes' records in the original sample order (records of one sample keep their own order)."""
    placed = [p for part in parts for p in part]
    placed.sort(key=lambda p: p[0])
    return [record for _, record in placed]


def merge(shard: Shard, jsonl: Path, placed: list[Placed], sums: D) -> D | None:
    """Hand this process's records and sums to the main process, and leave the process group. There: with several
    processes, write all records to `jsonl` in sample order; return the summed sums (None on the other processes).
    Part files are removed once merged."""
    got = shard.gather((placed, sums))
    if shard.count > 1:
        shard.part(jsonl).unlink(missing_ok=True)
        if got is not None:
            write_jsonl(jsonl, in_order([records for records, _ in got]))
        shard.state.wait_for_everyone()
        shard.state.destroy_process_group()  # left to interpreter exit, gloo's teardown sometimes aborts
    return None if got is None else add_up([total for _, total in got])


def add_up(items: Sequence[D]) -> D:
    """Field-by-field sum of counts: ints, floats, Counters, dataclasses, dicts and tuples of them (sets: union)."""
    if not items:
        raise ValueError("add_up needs at least one item")
    total = items[0]
    for item in items[1:]:
        total = _add(total, item)
    return total


def _add(a: Any, b: Any) -> Any:
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        values = {f.name: _add(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a) if f.init}
        return type(a)(**values)
    if isinstance(a, Counter):
        return Counter({k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}})
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, tuple):
        return tuple(_add(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, set):
        return a | b
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return a + b
    raise TypeError(f"cannot add up {type(a).__name__} values")
