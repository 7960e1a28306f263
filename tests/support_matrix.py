"""Print the README's support matrix from the family tests' own cases: `python tests/support_matrix.py`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from families import FAMILIES
from test_families import CASES, NEW_TOKENS, TREES, build, drafter, reference, tree_label

import specvlm


def main() -> None:
    torch.set_num_threads(2)
    rows: dict[str, dict[str, str]] = {}
    for family, kind in CASES:
        model, inputs = build(family)
        want = reference(model, inputs)
        dec = specvlm.load(model, drafter(kind, model))
        same = [dec.generate(inputs=inputs, max_new_tokens=NEW_TOKENS, tree=t).tokens == want for t in TREES]
        rows.setdefault(family, {})[kind] = f"{sum(same)}/{len(same)}"
    trees = ", ".join(tree_label(t) for t in TREES)
    print(f"Greedy, identical to `model.generate(**inputs)` (trees: {trees}):\n")
    print("| family | scheme | n-grams | exact copy | text-only draft |")
    print("|---|---|--:|--:|--:|")
    for family, cells in rows.items():
        print(f"| {family} | {scheme(family)} | {cells['ngram']} | {cells['copy']} | {cells.get('text', '')} |")


def scheme(family: str) -> str:
    """What is special about a family's attention and positions."""
    f = FAMILIES[family]
    parts = [f"sliding window {f.window}"] if f.window else []
    if f.mrope:
        parts.append("M-RoPE")
    if f.one_indexed_positions:
        parts.append("bidirectional prefix, positions from 1")
    elif f.bidirectional_image:
        parts.append("bidirectional image blocks")
    return ", ".join(parts) or "causal, 1D RoPE / learned"


if __name__ == "__main__":
    main()
