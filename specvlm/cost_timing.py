"""Timing a target's tree forwards, and the cost book: the cached table that the engine's own forwards correct.

The first sized tree on a machine times the target once (`measure_costs`: sizes interleaved, the fastest of several
rounds, the machine's load sampled around it, a separate 1-token timing as a cross-check, up to three attempts when
the machine was busy or the curve implausible) and caches the table in $SPECVLM_CACHE/costs.  That table is a prior:
a `CostBook` feeds every timed target forward of a sized generation to a `CostLearner` and writes the corrected table
back when it has moved, so a first measurement on a busy machine heals itself instead of cutting every tree short.
`specvlm --calibrate` measures again on purpose.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import GrowingCache, crop_to
from .costs import GRID, CostLearner, CostTable, excess_over_shape
from .machine_load import LoadMeter, LoadSample, current_load
from .notices import first_use
from .options import cache_root, write_cache_json
from .tree import TokenTree

if TYPE_CHECKING:
    from .models import TargetModel

#: tree sizes timed for a cost table (trimmed to the model's context window)
COST_SIZES = GRID
COST_PREFIX = 256  # tokens in the cache under the timed trees
COST_REPS = 5  # timed rounds over every size (the fastest counts: other work only ever adds time), after a warm-up
ATTEMPTS = 3  # measurements at most, while the machine is busy or the curve implausible
IMPLAUSIBLE = 0.25  # a point this far above the table's plausible shape, or a 1-token cross-check this far off
MOVED = 0.05  # the corrected table is written back once some size moved this share from the saved one
RECHECK_S = 600.0  # an untrusted table looks at the machine's load (to measure again if idle) at most this often
TABLE_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """One timing of the target: the table, and how far it can be trusted."""

    table: CostTable
    load: LoadSample  # other processes' CPU share while it ran
    excess: float  # the worst point's excess over the plausible shape (`costs.excess_over_shape`)
    single_ms: float  # a separate timing of 1-token forwards, after the sweep
    attempts: int

    @property
    def trusted(self) -> bool:
        first = self.table.ms(1)
        return not self.load.busy and self.excess <= IMPLAUSIBLE and abs(self.single_ms / first - 1) <= IMPLAUSIBLE

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "others_cpu": self.load.others,
            "excess": round(self.excess, 3),
            "single_ms": round(self.single_ms, 3),
            "attempts": self.attempts,
            "trusted": self.trusted,
        }


@torch.inference_mode()
def tree_costs(
    target: TargetModel,
    cache: Any,
    sizes: Sequence[int],
    reps: int,
    gen: torch.Generator,
    token_ids: torch.Tensor | None = None,
    fastest: bool = False,
) -> dict[str, float]:
    """Median ms (or the fastest, with `fastest`) of `TargetModel.score` over a random tree of each size on top of
    what `cache` holds (cut back after every forward, so each size sees the same prefix).  Rounds go over every size
    in turn (interleaved, so a burst of other work slows every size a little rather than a few sizes a lot); the
    first round is a warm-up; the device is synchronised around each timed forward.  Tokens are drawn from
    `token_ids` ([K] long, default: the whole vocabulary)."""
    prefix = int(cache.get_seq_length())
    pool = torch.arange(target.vocab_size) if token_ids is None else token_ids.cpu()  # [K]
    sync = torch.cuda.synchronize if target.device.type == "cuda" else (lambda: None)
    trees = {}
    for size in sizes:
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, size)]
        tokens = pool[torch.randint(0, pool.shape[0], (size,), generator=gen)]  # [N]
        trees[size] = TokenTree(tokens=tokens, parents=torch.tensor(parents, dtype=torch.long))
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for rep in range(reps + 1):  # the first round is a warm-up
        for size in sizes:
            sync()
            t0 = time.perf_counter()
            target.score(trees[size], cache)
            sync()
            if rep:
                times[size].append(1000 * (time.perf_counter() - t0))
            crop_to(cache, prefix)
    return {str(s): round(min(t) if fastest else statistics.median(t), 3) for s, t in times.items()}


def measure_costs(
    target: TargetModel, sizes: Sequence[int] = COST_SIZES, prefix: int = COST_PREFIX, reps: int = COST_REPS
) -> Measurement:
    """Time the target's tree forwards after a random `prefix`-token prompt (sizes beyond the context are dropped):
    the fastest of `reps` interleaved rounds per size, made non-decreasing in size.  While the machine is busy
    (`machine_load`), a point lies far above the curve's plausible shape, or the 1-token cost disagrees with a
    separate timing, it measures again (up to ATTEMPTS times) and keeps the fastest of every attempt per size."""
    gen = torch.Generator().manual_seed(0)
    prefix = max(1, min(prefix, target.max_positions // 2))
    sizes = [s for s in sizes if prefix + s + target.pad_to <= target.max_positions] or [1]
    words = torch.arange(target.vocab_size)  # [V]
    if target.image_token_id is not None:  # a VLM: text tokens only (image tokens need pixel values)
        words = words[words != target.image_token_id]
    cache = GrowingCache(target.model.config)  # the engine's cache, so the costs are the engine's
    target.prefill(words[torch.randint(0, words.shape[0], (prefix,), generator=gen)].tolist(), cache)
    best: dict[int, float] = {}
    for attempt in range(1, ATTEMPTS + 1):
        meter = LoadMeter()
        timed = tree_costs(target, cache, sizes, reps, gen, token_ids=words, fastest=True)
        single = tree_costs(target, cache, [1], reps, gen, token_ids=words, fastest=True)["1"]
        load = meter.sample()
        for k, ms in timed.items():
            best[int(k)] = min(ms, best.get(int(k), ms))
        raw = CostTable(tuple(sorted(best.items())))
        points, floor = [], 0.0
        for n, ms in raw.points:
            floor = max(floor, ms)
            points.append((n, floor))
        done = Measurement(CostTable(tuple(points)), load, excess_over_shape(raw), single, attempt)
        if done.trusted:
            break
        log.info("specvlm: cost timing attempt %d untrusted (%s)", attempt, done.as_dict())
    return done


def cost_key(target: TargetModel) -> str:
    """What a cost table depends on: the model (config), device, dtype, CPU threads and weight packing."""
    config = target.model.config.to_json_string(use_diff=False)
    device = str(target.device)
    if target.device.type == "cuda":
        device = torch.cuda.get_device_name(target.device).replace(" ", "_")
    parts = [
        type(target.model).__name__,
        hashlib.sha1(config.encode()).hexdigest()[:12],
        device,
        str(target.dtype).replace("torch.", ""),
        f"t{torch.get_num_threads()}",
        "packed" if target.packed is not None else "plain",
    ]
    return "-".join(parts)


class CostBook:
    """The target's forward costs for the engine: the cached table as a prior, corrected by every forward the engine
    times (`observe`), and written back (`flush`) once the correction moved some size by MOVED or more.

    `path` None: nothing is read or written (a table given by the caller, as tests and projections do); with
    `learn` False the table stays as given."""

    def __init__(
        self, prior: CostTable, path: Path | None = None, *, learn: bool = True, record: dict[str, Any] | None = None
    ):
        self.learner = CostLearner(prior)
        self.path, self.learn = path, learn
        self.record = dict(record or {})  # the file's other fields (how the prior was measured)
        self.saved = self.learner.table()

    def table(self) -> CostTable:
        return self.learner.table() if self.learn else self.learner.prior

    def observe(self, tokens: int, ms: float) -> None:
        if self.learn:
            self.learner.observe(tokens, ms)

    @property
    def moved(self) -> float:
        """The largest share by which the corrected table differs from the last one written."""
        now = self.table()
        return max(abs(now.ms(n) / ms - 1.0) for n, ms in self.saved.points)

    def flush(self) -> bool:
        """Write the corrected table back if it moved; True when written."""
        if self.path is None or not self.learn or self.moved < MOVED:
            return False
        self.record["corrections"] = int(self.record.get("corrections", 0)) + 1
        self.record["observed_forwards"] = int(self.record.get("observed_forwards", 0)) + self.learner.observations
        write_table(self.path, self.table(), self.record)
        self.saved = self.table()
        return True

    def describe(self) -> dict[str, Any]:
        """For `--stats`: which table, how it was measured, and how this run corrected it."""
        return {
            "file": str(self.path) if self.path is not None else None,
            "measured": self.record.get("measured"),
            "prior_ms": self.learner.prior.as_dict(),
            "now_ms": self.table().as_dict(),
            "observed": {str(n): len(v) for n, v in sorted(self.learner.seen.items())},
        }


def table_path(target: TargetModel, folder: Path | None = None) -> Path:
    return (folder or cache_root() / "costs") / f"{cost_key(target)}.json"


def write_table(path: Path, table: CostTable, record: dict[str, Any]) -> None:
    """The table as JSON, atomically; a read-only cache is not an error (the table then lives for this process)."""
    body = {"version": TABLE_VERSION, "key": path.stem, "target_ms": table.as_dict(), **record}
    if not write_cache_json(path, body):
        log.debug("specvlm: could not write the cost table %s", path)


def calibrate(target: TargetModel, folder: Path | None = None) -> CostBook:
    """Measure the target's forward costs now and cache them (what first use does, and `specvlm --calibrate`)."""
    path = table_path(target, folder)
    done = measure_costs(target)
    record = {"measured": done.as_dict(), "measured_ms": done.table.as_dict()}
    write_table(path, done.table, record)
    return CostBook(done.table, path, record=record)


def remeasure_now(
    path: Path, table: CostTable, record: dict[str, Any], load_now: Callable[[], LoadSample] = current_load
) -> bool:
    """Whether a saved table should be measured again now: its measurement was untrusted (busy machine, implausible
    curve) and the machine is idle now.  The load is looked at once per RECHECK_S per file (the time of the look is
    kept in the file), so many loads in a row on a busy machine do not each pay for a look."""
    if (record.get("measured") or {}).get("trusted", True):
        return False
    if time.time() - float(record.get("load_checked", 0.0)) < RECHECK_S:
        return False
    if not load_now().busy:
        return True
    record["load_checked"] = round(time.time(), 1)
    write_table(path, table, record)
    return False


def cost_book(target: TargetModel, folder: Path | None = None) -> CostBook:
    """The target's cost book from $SPECVLM_CACHE/costs, measured (a few seconds) and saved on first use.  A table
    measured while the machine was busy is measured again when it is idle now; any table is corrected as the engine
    runs, so nothing needs deleting by hand."""
    path = table_path(target, folder)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("version") == TABLE_VERSION:
                table = CostTable.from_dict(saved["target_ms"])
                record = {k: v for k, v in saved.items() if k not in ("version", "key", "target_ms")}
                if not remeasure_now(path, table, record):
                    return CostBook(table, path, record=record)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError):
            pass  # a damaged file is measured again
    first_use("timing this model's tree forwards (a few seconds, once)", path)
    return calibrate(target, folder)
