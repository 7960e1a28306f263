"""`python -m eval.lookup_cost`: the retrieval draft's lookup time per step and memory against datastore size.

Each size gets a synthetic datastore (token ids drawn from a Zipf law over the embedded target's 49,152 ids,
documents of 200 tokens: natural text's skew, no real corpus needed), built once into --dir. Then, for --steps
random contexts drawn from the store itself (so the patterns occur), one draft step is timed the way a tree uses it:
the longest occurring suffix of a 16-token context, and --nodes nodes below it (one extension and one count each).
Printed: build seconds, size on disk, resident memory after opening (memory map: only touched pages count),
median and 90th-percentile step time. Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np

from drafters.datastore import Datastore, write_datastore

VOCAB = 49152


def synthetic_documents(tokens: int, seed: int, length: int = 200) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = (rng.zipf(1.2, tokens) - 1) % VOCAB
    return [ids[i : i + length] for i in range(0, tokens, length)]


def build(folder: Path, size: int) -> None:
    write_datastore(folder, synthetic_documents(size, seed=size % 1000), vocab_size=VOCAB, tokenizer="zipf")


def resident_mib() -> float:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def time_steps(store: Datastore, steps: int, nodes: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        start = int(rng.integers(0, store.size - 40))
        context = [int(t) for t in store.tokens[start : start + 16] if t >= 0] or [0]
        t0 = time.perf_counter()
        match = store.longest(context, 16)
        for _ in range(nodes):  # down the most frequent branch, as a chain of the tree would
            if match is None:
                break
            follow = store.followers(match)
            if not follow:
                break
            match = store.extend(match, max(follow, key=follow.__getitem__))
        out.append(1000 * (time.perf_counter() - t0))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m eval.lookup_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="datastore sizes in tokens, comma-separated")
    ap.add_argument("--dir", type=Path, default=Path("runs/lookup-cost"), help="where the synthetic stores go")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=8, help="nodes looked up below the root per step")
    ap.add_argument("--out", type=Path, default=Path("results/lookup-cost.json"))
    args = ap.parse_args(argv)
    rows = []
    print(f"{'tokens':>12} {'build s':>8} {'MiB disk':>9} {'RSS MiB':>8} {'step ms p50':>11} {'p90':>7}")
    for size in (int(float(s)) for s in args.sizes.split(",")):
        folder = args.dir / f"zipf-{size}"
        if not (folder / "datastore.json").is_file():  # built in a child process: its memory is not ours
            child = multiprocessing.get_context("spawn").Process(target=build, args=(folder, size))
            child.start()
            child.join()
        meta = json.loads((folder / "datastore.json").read_text())
        store = Datastore(folder)
        times = time_steps(store, args.steps, args.nodes, seed=1)
        rss = resident_mib()
        row = {
            "tokens": meta["tokens"],
            "build_seconds": meta["build_seconds"],
            "disk_mib": round(meta["bytes"] / 2**20, 1),
            "rss_mib": round(rss, 1),
            "step_ms_p50": round(statistics.median(times), 3),
            "step_ms_p90": round(sorted(times)[int(0.9 * len(times))], 3),
            "nodes": args.nodes,
        }
        rows.append(row)
        print(
            f"{row['tokens']:>12,} {row['build_seconds']:>8.1f} {row['disk_mib']:>9.1f} {row['rss_mib']:>8.0f} "
            f"{row['step_ms_p50']:>11.3f} {row['step_ms_p90']:>7.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
