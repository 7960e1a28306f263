"""The eval CLIs' result files (JSON summary, JSONL records), markdown tables and plots. Torch-free."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def describe_tree(builder: object) -> str:
    """'opt(nodes=24, threshold=0.3, max_depth=8)': a builder's name and shape, for tables and configs."""
    name = str(getattr(builder, "name", type(builder).__name__))
    if not dataclasses.is_dataclass(builder):
        return name
    parts = []
    for f in dataclasses.fields(builder):
        if f.name in ("name", "samples_children"):
            continue
        value = getattr(builder, f.name)
        if f.name == "parents" and isinstance(value, tuple):
            parts.append(f"nodes={len(value)}")
        else:
            parts.append(f"{f.name}={value}")
    return f"{name}({', '.join(parts)})" if parts else name


# -- result files --------------------------------------------------------------------------------------------------
def result_paths(args: argparse.Namespace, cli: str) -> tuple[Path | None, Path]:
    """(JSON summary or None, JSONL records); refuses existing files unless --overwrite."""
    out = Path(args.out) if args.out else None
    if args.jsonl:
        jsonl = Path(args.jsonl)
    elif out is not None:
        jsonl = out.with_suffix(".jsonl")
    else:
        jsonl = Path("results") / f"{cli}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    if out is not None and out.resolve() == jsonl.resolve():
        raise ValueError(f"--out and --jsonl are the same file ({out}): give them different names")
    for path in (out, jsonl):
        if path is not None:
            check_writable(path, args.overwrite)
    return out, jsonl


def check_writable(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder: give a file name")
    if path.exists() and not overwrite:
        import specvlm

        raise specvlm.SpecVLMError(f"{path} already exists: pass --overwrite to replace it, or choose another name")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return describe_tree(value)
    return repr(value)


def write_json(path: str | Path, obj: Any, overwrite: bool) -> None:
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]], *, append: bool = False) -> None:
    """One JSON object per line; `append=True` adds to the file (records survive an interrupted run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")


# -- plots ---------------------------------------------------------------------------------------------------------
def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed, no plot (pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write as PNG, close, and say where it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}", file=sys.stderr)


# -- tables --------------------------------------------------------------------------------------------------------
def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub markdown table; floats get 2 decimals, missing values '-'. Numbers align right."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    width = [max([len(col), 3, *(len(r[i]) for r in cells)]) for i, col in enumerate(columns)]
    numeric = [all(isinstance(row.get(col), (int, float)) or row.get(col) is None for row in rows) for col in columns]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, width, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(width, numeric, strict=True)
    )
    return "\n".join([line(columns), rule + "|", *(line(r) for r in cells)])
