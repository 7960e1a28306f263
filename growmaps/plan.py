"""Plan a static tree from a measured acceptance vector: Sequoia's dynamic programme, optionally hardware-aware.

python -m growmaps.plan --acceptance growmaps/acceptance-smollm2-ngram.json --size 32 --max-depth 8 --out my.json

The model (Sequoia's positional acceptance assumption)
-------------------------------------------------------
acc[k] = P(the target's next token is the draft's rank-k token | it is none of ranks 0..k-1), measured by
`growmaps.measure`, the same at every depth and independent of what came before. Then the rank-k child of an
accepted node is accepted with probability

    r[k] = acc[k] * prod_{i<k} (1 - acc[i])          (the siblings' events are disjoint: sum_k r[k] <= 1)

For greedy verification a node is accepted iff the target's token equals its draft token at every level of its
path; for sampling (children drawn without replacement, recursive rejection) it is the same product with acc[k]
the acceptance of the k-th draw after k rejections. So a tree's expected new tokens per target call is

    E = 1 + sum over non-root nodes v of  prod over the edges (u -> w) on the root-to-v path of r[rank of w]

(1 = the bonus token the target always adds). The DP maximises E over trees with at most N nodes (root
included), depth at most D, and at most W children per node (every node, the root included; ranks past the
acceptance vector have r = 0 and are never worth a node). With V_d(n) the best value of the part below an
accepted node with a budget of n nodes (itself included) and d levels:

    V_0(n) = V_d(1) = 0,   V_d(n) = max_{0 <= b <= W} H_{d,b}(n - 1)
    H_{d,0}(s) = 0,        H_{d,b}(s) = max_{1 <= t <= s} H_{d,b-1}(s - t) + r[b-1] * (1 + V_{d-1}(t))

H_{d,b}(s) is the best b rank-ordered children sharing at most s nodes; child b (rank b-1) gets a subtree of t
nodes. E = 1 + V_D(N); ties keep the smaller tree. O(D * W * N^2), vectorised over budgets.

Hardware-aware choice: with --costs (target ms per forward by tokens scored, draft ms per level) a tree is
planned for each size in --sizes and each depth <= --max-depth, and the plan with the highest predicted
tokens/s = E / (target_ms(size) + depth * draft_ms_per_level) wins.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.args import positive_int, size_list
from eval.common import run_cli
from eval.results import check_writable, markdown_table
from specvlm.errors import ConfigError
from specvlm.growmap import PROVENANCE_KEYS, node_depths, save_growmap

CLI = "growmaps.plan"


# -- the model ----------------------------------------------------------------------------------------------------
def check_acceptance(acc: object, where: str = "acceptance") -> tuple[float, ...]:
    if isinstance(acc, (str, bytes)) or not isinstance(acc, Sequence) or not acc:
        raise ConfigError(f"{where}: expected a non-empty list of probabilities")
    ok = all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0.0 <= a <= 1.0 for a in acc)
    if not ok:
        raise ConfigError(f"{where}: acceptance rates must be numbers in [0, 1], got {list(acc)}")
    return tuple(float(a) for a in acc)


def rank_probs(acc: Sequence[float]) -> list[float]:
    """r[k] = P(the target's token is the draft's rank-k token) = acc[k] * prod_{i<k} (1 - acc[i])."""
    out, miss = [], 1.0
    for a in acc:
        out.append(miss * a)
        miss *= 1.0 - a
    return out


def expected_tokens(parents: Sequence[int], acc: Sequence[float]) -> float:
    """E[new tokens per target call] of a tree: 1 (bonus) + sum over nodes of their path acceptance probability."""
    r = rank_probs(acc)
    reach = [1.0] * len(parents)
    kids = [0] * len(parents)
    for i in range(1, len(parents)):
        p = parents[i]
        rank = kids[p]
        kids[p] += 1
        reach[i] = reach[p] * (r[rank] if rank < len(r) else 0.0)
    return 1.0 + sum(reach[1:])


@dataclass(frozen=True)
class Plan:
    parents: tuple[int, ...]
    expected_tokens: float  # 1 + E[accepted drafted tokens]

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return max(node_depths(self.parents))

    def level_sizes(self) -> list[int]:
        depth = node_depths(self.parents)
        return [depth.count(d) for d in range(self.depth + 1)]


class Planner:
    """Sequoia's DP solved once for every budget n <= size and depth d <= max_depth; `best(n, d)` reads a tree."""

    def __init__(self, acc: Sequence[float], size: int, max_depth: int, max_branch: int):
        if size < 1 or max_depth < 0 or max_branch < 1:
            raise ConfigError(f"need size >= 1, max_depth >= 0, max_branch >= 1; got {size}, {max_depth}, {max_branch}")
        self.acc = check_acceptance(acc)
        self.size, self.max_depth = size, max_depth
        r = rank_probs(self.acc)[:max_branch]
        self.width = len(r)
        n, w, d_max = size, self.width, max_depth
        # numpy, not torch: these arrays are tiny, and torch's thread pool only adds overhead on a busy CPU
        self.value = np.zeros((d_max + 1, n + 1))  # [D+1, N+1]  V_d(n) (column 0 unused)
        self.children = np.zeros((d_max + 1, n + 1), dtype=np.int64)  # [D+1, N+1]  argmax b of V_d(n)
        self.take = np.zeros((d_max + 1, w + 1, n), dtype=np.int64)  # [D+1, W+1, N]  t of H_{d,b}(s)
        if n == 1:
            return
        src = np.arange(n)[:, None] - np.arange(1, n)[None, :]  # [N, N-1]  s - t: budget s, last child t nodes
        valid = src >= 0
        src = np.maximum(src, 0)
        for d in range(1, d_max + 1):
            h_prev = np.zeros(n)  # [N]  H_{d,0}(s) = 0
            best = np.zeros(n)  # [N]  max over b so far
            best_b = np.zeros(n, dtype=np.int64)  # [N]
            for b in range(1, w + 1):
                gain = r[b - 1] * (1.0 + self.value[d - 1, 1:n])  # [N-1]  child of t nodes, t = 1..N-1
                cand = np.where(valid, h_prev[src] + gain[None, :], -math.inf)  # [N, N-1]
                arg = cand.argmax(axis=1)  # [N]  the first (smallest) t on ties
                h = cand[np.arange(n), arg]  # [N]  H_{d,b}(s)
                self.take[d, b] = arg + 1
                better = h > best
                best = np.where(better, h, best)
                best_b = np.where(better, b, best_b)
                h_prev = h
            self.value[d, 1:] = best  # V_d(n) = max_b H_{d,b}(n - 1)
            self.children[d, 1:] = best_b

    def best(self, size: int | None = None, depth: int | None = None) -> Plan:
        """The optimal tree with at most `size` nodes and depth at most `depth` (defaults: the planner's)."""
        size = self.size if size is None else size
        depth = self.max_depth if depth is None else depth
        if not 1 <= size <= self.size or not 0 <= depth <= self.max_depth:
            raise ConfigError(f"plan for size {size}, depth {depth} outside the table ({self.size}, {self.max_depth})")
        budgets, parents = [(size, depth)], [-1]
        i = 0
        while i < len(budgets):  # breadth-first: a node's children get consecutive indices, in rank order
            n, d = budgets[i]
            if d > 0 and n > 1:
                sizes, s = [], n - 1
                for b in range(int(self.children[d, n]), 0, -1):
                    t = int(self.take[d, b, s])
                    sizes.append(t)
                    s -= t
                for t in reversed(sizes):
                    parents.append(i)
                    budgets.append((t, d - 1))
            i += 1
        return Plan(tuple(parents), 1.0 + float(self.value[depth, size]))


# -- hardware costs -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Costs:
    target_ms: tuple[tuple[int, float], ...]  # (tokens scored, ms per target forward), ascending
    draft_ms_per_level: float

    def target(self, tokens: int) -> float:
        """ms of one target forward over `tokens` tokens, linearly interpolated between measured sizes."""
        points = self.target_ms
        if tokens <= points[0][0]:
            return points[0][1]
        for (n0, m0), (n1, m1) in itertools.pairwise(points):
            if tokens <= n1:
                return m0 + (m1 - m0) * (tokens - n0) / (n1 - n0)
        raise ConfigError(f"no target cost measured for {tokens} tokens (largest measured: {points[-1][0]})")

    def call_ms(self, plan: Plan) -> float:
        return self.target(plan.size) + plan.depth * self.draft_ms_per_level


def parse_costs(obj: object, where: str) -> Costs:
    if isinstance(obj, dict) and "costs" in obj:
        obj = obj["costs"]
    if not isinstance(obj, dict) or not isinstance(obj.get("target_ms"), dict):
        raise ConfigError(
            f'{where}: expected {{"target_ms": {{"1": 86, "16": 178, ...}}, "draft_ms_per_level": 0.5}} '
            '(or that object under "costs")'
        )
    points = []
    for key, ms in obj["target_ms"].items():
        if not str(key).isdigit() or int(key) < 1:
            raise ConfigError(f"{where}: target_ms keys are token counts >= 1, got {key!r}")
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not math.isfinite(ms) or ms <= 0:
            raise ConfigError(f"{where}: target_ms[{key}] must be a positive number of ms, got {ms!r}")
        points.append((int(key), float(ms)))
    if not points:
        raise ConfigError(f"{where}: target_ms is empty")
    draft = obj.get("draft_ms_per_level", 0.0)
    if not isinstance(draft, (int, float)) or isinstance(draft, bool) or not math.isfinite(draft) or draft < 0:
        raise ConfigError(f"{where}: draft_ms_per_level must be a number >= 0, got {draft!r}")
    return Costs(tuple(sorted(points)), float(draft))


@dataclass(frozen=True)
class Choice:
    planned_size: int
    plan: Plan
    ms: float | None = None

    @property
    def tok_s(self) -> float | None:
        return None if self.ms is None else 1000.0 * self.plan.expected_tokens / self.ms


def choose(planner: Planner, sizes: Sequence[int], costs: Costs) -> list[Choice]:
    """For each size, the depth with the highest predicted tokens/s (ties: the shallower tree).

    Depth 0 (the root alone, plain decoding) is a choice only for size 1, so each row shows a tree of its size.
    """
    out = []
    for size in sizes:
        best: Choice | None = None
        for depth in range(0 if size == 1 else 1, planner.max_depth + 1):
            plan = planner.best(size, depth)
            choice = Choice(size, plan, costs.call_ms(plan))
            if best is None or choice.tok_s > best.tok_s * (1 + 1e-12):
                best = choice
        assert best is not None
        out.append(best)
    return out


# -- CLI ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {CLI}",
        description="Plan a static draft tree (a growmap) from a measured acceptance vector with Sequoia's DP.",
        epilog="examples:\n"
        "  python -m growmaps.plan --acceptance acc.json --size 32 --max-depth 8 --out growmaps/my-tree.json\n"
        "  python -m growmaps.plan --acceptance acc.json --costs acc.json --sizes 4,8,16,32,64 --out my-tree.json\n"
        'The acceptance file is a JSON list, or an object with an "acceptance" list (growmaps.measure writes one).',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--acceptance", required=True, metavar="FILE", help="JSON acceptance vector (acc[k])")
    parser.add_argument("--size", type=positive_int, metavar="N", help="most nodes in the tree, root included")
    parser.add_argument("--max-depth", type=positive_int, default=8, metavar="D", help="deepest level (default 8)")
    parser.add_argument(
        "--max-branch", type=positive_int, default=16, metavar="W", help="most children per node (default 16)"
    )
    parser.add_argument("--costs", metavar="FILE", help="JSON target_ms by tokens scored + draft_ms_per_level")
    parser.add_argument("--sizes", type=size_list, metavar="LIST", help="with --costs: sizes to try, e.g. 4,8,16,32,64")
    parser.add_argument("--out", metavar="FILE", help="write the chosen growmap here (JSON)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def read_json(path: str, what: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err


def _provenance(obj: Any) -> dict[str, Any]:
    prov = obj.get("provenance") if isinstance(obj, dict) else None
    return prov if isinstance(prov, dict) else {}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.sizes is not None and args.costs is None:
        raise ConfigError("--sizes picks among sizes by predicted tokens/s: it needs --costs")
    if args.sizes is not None and args.size is not None:
        raise ConfigError("give --size (one tree) or --sizes (a choice among several), not both")
    if args.out is not None:
        check_writable(Path(args.out), args.overwrite)
    acc_obj = read_json(args.acceptance, "acceptance")
    acc = check_acceptance(acc_obj.get("acceptance") if isinstance(acc_obj, dict) else acc_obj, args.acceptance)
    costs_obj = read_json(args.costs, "costs") if args.costs else None
    costs = parse_costs(costs_obj, args.costs) if costs_obj is not None else None

    if costs is not None:
        sizes = args.sizes or ([args.size] if args.size else [n for n, _ in costs.target_ms])
        planner = Planner(acc, max(sizes), args.max_depth, args.max_branch)
        choices = choose(planner, sizes, costs)
        picked = max(choices, key=lambda c: (c.tok_s, -c.plan.size))
    else:
        planner = Planner(acc, args.size or 32, args.max_depth, args.max_branch)
        choices = [Choice(planner.size, planner.best())]
        picked = choices[0]

    rows = [
        {
            "size": c.planned_size,
            "nodes": c.plan.size,
            "depth": c.plan.depth,
            "tokens/call": round(c.plan.expected_tokens, 3),
            **({"ms/call": round(c.ms, 1), "tok/s": round(c.tok_s, 2)} if c.ms is not None else {}),
            "pick": "*" if c is picked else "",
        }
        for c in choices
    ]
    columns = ["size", "nodes", "depth", "tokens/call", *(["ms/call", "tok/s"] if costs else []), "pick"]
    print(markdown_table(rows, columns))
    plan = picked.plan
    print(
        f"picked: {plan.size} nodes, depth {plan.depth}, nodes per level {plan.level_sizes()}, "
        f"predicted {plan.expected_tokens:.3f} tokens/call" + (f", {picked.tok_s:.2f} tok/s" if costs else "")
    )
    if args.out is None:
        print(f"parents: {list(plan.parents)}")
        return 0

    source = _provenance(acc_obj)
    prov: dict[str, Any] = {key: str(source.get(key, "unknown")) for key in PROVENANCE_KEYS}
    if costs_obj is not None and "hardware" in _provenance(costs_obj):
        prov["hardware"] = str(_provenance(costs_obj)["hardware"])
    prov["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    prov["command"] = shlex.join(["python", "-m", CLI, *argv])
    if "command" in source:
        prov["acceptance_command"] = str(source["command"])
    prov["planner"] = {
        "objective": "tokens/s" if costs else "tokens/call",
        "size": picked.planned_size,
        "max_depth": args.max_depth,
        "max_branch": args.max_branch,
        **({"sizes": [c.planned_size for c in choices], "predicted_tok_s": round(picked.tok_s, 3)} if costs else {}),
    }
    path = save_growmap(
        args.out, plan.parents, prov, predicted_accepted=plan.expected_tokens, acceptance=acc, overwrite=True
    )
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
