"""What a target forward costs by tokens scored, and tree sizes chosen for tokens per second rather than per call.

A tree of n drafted nodes whose path probabilities (under the draft, q) are g_1 >= g_2 >= ... is expected to add
1 + sum_i g_i tokens per target call (the bonus token plus every node on the accepted path), and a step costs the
drafting time D plus the target's forward over n + 1 tokens T(n + 1).  The size worth scoring is

    n* = argmax_n (1 + s * sum_{i <= n} g_i) / (D + T(n + 1))

where s scales the draft's path probabilities to what the target really accepts (`AcceptanceFit`, learnt during a
generation: drafts are rarely calibrated, n-gram drafts are nearly point masses).  T comes from `CostTable`,
measured once per model, device, dtype, thread count and weight packing and cached as JSON under
$SPECVLM_CACHE/costs (see `cached_costs`).  On this CPU T is nearly flat up to ~16 tokens and then climbs; on a GPU
it stays flat far longer, so the same rule keeps small trees on one and large trees on the other.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import GrowingCache, crop_to
from .options import cache_root
from .tree import TokenTree

if TYPE_CHECKING:
    from .models import TargetModel

#: tree sizes timed for a cost table (trimmed to the model's context window)
COST_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
COST_PREFIX = 256  # tokens in the cache under the timed trees
COST_REPS = 5  # timed forwards per size (the fastest counts: other work only ever adds time), after one warm-up
TABLE_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostTable:
    """ms of one target forward by tokens scored: (tokens, ms) points, ascending in tokens."""

    points: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if not self.points or any(n < 1 or not ms > 0 for n, ms in self.points):
            raise ValueError(f"a cost table needs (tokens >= 1, ms > 0) points, got {self.points}")
        if [n for n, _ in self.points] != sorted({n for n, _ in self.points}):
            raise ValueError(f"cost table sizes must be distinct and ascending, got {self.points}")

    def ms(self, tokens: int) -> float:
        """Linear between measured sizes; flat below the first; beyond the last, the last segment's slope."""
        pts = self.points
        if tokens <= pts[0][0] or len(pts) == 1:
            return pts[0][1]
        for (n0, m0), (n1, m1) in itertools.pairwise(pts):
            if tokens <= n1:
                return m0 + (m1 - m0) * (tokens - n0) / (n1 - n0)
        (n0, m0), (n1, m1) = pts[-2], pts[-1]
        return m1 + max(0.0, (m1 - m0) / (n1 - n0)) * (tokens - n1)

    def as_dict(self) -> dict[str, float]:
        return {str(n): ms for n, ms in self.points}

    @classmethod
    def from_dict(cls, obj: dict[str, float]) -> CostTable:
        return cls(tuple(sorted((int(k), float(v)) for k, v in obj.items())))


@dataclass(frozen=True)
class SpeedModel:
    """The step's hand-off to cost-aware builders: the forward costs and the calibration of draft probabilities."""

    costs: CostTable
    gain_scale: float = 1.0  # realised accepted tokens per unit of predicted path probability

    def rate(self, gains: Sequence[float], count: int, draft_ms: float) -> float:
        """Predicted tokens per ms when scoring the `count` best nodes (gains sorted descending)."""
        return (1.0 + self.gain_scale * sum(gains[:count])) / (draft_ms + self.costs.ms(count + 1))

    def best_count(self, gains: Sequence[float], draft_ms: float) -> int:
        """How many of the nodes (path probabilities `gains`, sorted descending) to score: the most tokens per ms.
        0 means the root alone.  Ties go to the smaller tree."""
        best, best_rate, total = 0, 1.0 / (draft_ms + self.costs.ms(1)), 0.0
        for n, g in enumerate(gains, start=1):
            total += g
            rate = (1.0 + self.gain_scale * total) / (draft_ms + self.costs.ms(n + 1))
            if rate > best_rate * (1 + 1e-9):
                best, best_rate = n, rate
        return best

    def worth_drafting(
        self, gains: Sequence[float], draft_ms: float, level_ms: float, more_gain: float, more_nodes: int
    ) -> bool:
        """Whether one more draft call could pay: at best it adds `more_gain` path probability over `more_nodes`
        nodes for `level_ms` more drafting; compare that best case with the best tree available now."""
        n = self.best_count(gains, draft_ms)
        now = self.rate(gains, n, draft_ms)
        best_case = (1.0 + self.gain_scale * (sum(gains[:n]) + more_gain)) / (
            draft_ms + level_ms + self.costs.ms(n + more_nodes + 1)
        )
        return best_case > now


@dataclass
class AcceptanceFit:
    """Running ratio of accepted draft tokens to predicted ones (sum of kept path probabilities), per generation.

    Starts from `prior` with the weight of `prior_tokens` predicted tokens, so the first steps trust the draft."""

    prior: float = 1.0
    prior_tokens: float = 4.0
    predicted: float = 0.0
    accepted: float = 0.0

    def update(self, predicted: float, accepted: int) -> None:
        self.predicted += predicted
        self.accepted += accepted

    @property
    def scale(self) -> float:
        value = (self.accepted + self.prior * self.prior_tokens) / (self.predicted + self.prior_tokens)
        return min(max(value, 0.02), 2.0)


# -- measuring ------------------------------------------------------------------------------------------------------
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
    what `cache` holds (cut back after every forward, so each size sees the same prefix). The first forward of each
    size is a warm-up; the device is synchronised around each timed forward. Tokens are drawn from `token_ids` ([K]
    long, default: the whole vocabulary)."""
    prefix = int(cache.get_seq_length())
    pool = torch.arange(target.vocab_size) if token_ids is None else token_ids.cpu()  # [K]
    sync = torch.cuda.synchronize if target.device.type == "cuda" else (lambda: None)
    out: dict[str, float] = {}
    for size in sizes:
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, size)]
        tokens = pool[torch.randint(0, pool.shape[0], (size,), generator=gen)]  # [N]
        tree = TokenTree(tokens=tokens, parents=torch.tensor(parents, dtype=torch.long))
        times = []
        for rep in range(reps + 1):  # the first forward of each size is a warm-up
            sync()
            t0 = time.perf_counter()
            target.score(tree, cache)
            sync()
            if rep:
                times.append(1000 * (time.perf_counter() - t0))
            crop_to(cache, prefix)
        out[str(size)] = round(min(times) if fastest else statistics.median(times), 3)
    return out


def measure_costs(
    target: TargetModel, sizes: Sequence[int] = COST_SIZES, prefix: int = COST_PREFIX, reps: int = COST_REPS
) -> CostTable:
    """Time the target's tree forwards after a random `prefix`-token prompt (sizes beyond the context are dropped):
    the fastest of `reps` per size, then made non-decreasing in size (a bigger tree never costs less, so a dip is
    noise from other work on the machine)."""
    gen = torch.Generator().manual_seed(0)
    prefix = max(1, min(prefix, target.max_positions // 2))
    sizes = [s for s in sizes if prefix + s + target.pad_to <= target.max_positions] or [1]
    words = torch.arange(target.vocab_size)  # [V]
    if target.image_token_id is not None:  # a VLM: text tokens only (image tokens need pixel values)
        words = words[words != target.image_token_id]
    cache = GrowingCache(target.model.config)  # the engine's cache, so the costs are the engine's
    target.prefill(words[torch.randint(0, words.shape[0], (prefix,), generator=gen)].tolist(), cache)
    timed = tree_costs(target, cache, sizes, reps, gen, token_ids=words, fastest=True)
    points, floor = [], 0.0
    for n, ms in sorted((int(k), v) for k, v in timed.items()):
        floor = max(floor, ms)
        points.append((n, floor))
    return CostTable(tuple(points))


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


def cached_costs(target: TargetModel, folder: Path | None = None) -> CostTable:
    """The target's cost table from $SPECVLM_CACHE/costs, measured (a few seconds) and saved on first use.
    Delete the file to measure again (e.g. after a run on a busy machine)."""
    path = (folder or cache_root() / "costs") / f"{cost_key(target)}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("version") == TABLE_VERSION:
                return CostTable.from_dict(saved["target_ms"])
        except (json.JSONDecodeError, KeyError, ValueError, TypeError):
            pass  # a damaged file is measured again
    log.warning("specvlm: timing this target's tree forwards once for tree sizes (cached in %s)", path)
    table = measure_costs(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": TABLE_VERSION, "key": path.stem, "target_ms": table.as_dict()}, indent=1))
    tmp.replace(path)
    return table
