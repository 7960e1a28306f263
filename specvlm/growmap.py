"""Static tree files ("growmaps"): our own versioned JSON format, and Sequoia's `.pt` files read without running code.

JSON, version 1::

    {
      "format": "specvlm-growmap",
      "version": 1,
      "parents": [-1, 0, 0, 1, ...],          # or "branching": [4, 2, 1] (every node at level d gets branching[d])
      "provenance": {"draft": ..., "target": ..., "dataset": ..., "hardware": ..., "created": ..., "command": ...},
      "predicted_accepted": 2.91,             # optional: planner's expected new tokens per target call (bonus included)
      "acceptance": [0.62, 0.21, ...]         # optional: the acceptance vector the tree was planned from
    }

Node 0 is the root and parents[i] < i. The children of a node, in index order, take its 1st, 2nd, ... most likely
draft tokens: exactly `TemplateTree`'s convention, so a growmap is a `TemplateTree(parents=...)`.

Sequoia's growmaps are `torch.save`d dicts {roots, branches, Successors, mask, depth, size}: node 0 is the root,
`Successors[i]` lists node i's children in rank order, `roots[l]` / `branches[l]` are the nodes expanded at step l
and their child counts, `mask` is the [size, size] ancestor-or-self matrix and `depth` the [size] node depths. They
are read with `torch.load(weights_only=True)`, which refuses pickled code instead of running it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .builders.simple import template_from_branching
from .errors import GrowmapError, SpecVLMError
from .safe_load import load_torch_file
from .tree_choices import load_choices, parents_from_choices, split_choices_spec

FORMAT = "specvlm-growmap"
VERSION = 1
PROVENANCE_KEYS = ("draft", "target", "dataset", "hardware", "created", "command")
REQUIRED_KEYS = frozenset({"format", "version", "provenance"})
OPTIONAL_KEYS = frozenset({"parents", "branching", "predicted_accepted", "acceptance"})
SEQUOIA_KEYS = ("roots", "branches", "Successors", "mask", "depth", "size")
#: larger trees are surely a mistake (a target forward over them would not fit any accelerator)
MAX_NODES = 1 << 16


@dataclass(frozen=True)
class Growmap:
    """A static tree shape: parents (node 0 = root, siblings in draft rank order) and where it came from."""

    parents: tuple[int, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    predicted_accepted: float | None = None  # expected new tokens per target call, bonus token included
    acceptance: tuple[float, ...] | None = None
    source: Path | None = None

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return max(node_depths(self.parents))


# -- checks shared by every source -------------------------------------------------------------------------------
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def node_depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node (root 0); `parents` must already be valid."""
    depth = [0] * len(parents)
    for i in range(1, len(parents)):
        depth[i] = depth[parents[i]] + 1
    return depth


def check_parents(
    parents: object, where: str, error: type[SpecVLMError] = GrowmapError, max_nodes: int = MAX_NODES
) -> tuple[int, ...]:
    """Validated parents: a non-empty list of ints, parents[0] == -1, 0 <= parents[i] < i (no cycles possible)."""
    if isinstance(parents, (str, bytes)) or not isinstance(parents, Sequence):
        raise error(f"{where}: 'parents' must be a list of integers, got {type(parents).__name__}")
    if not parents:
        raise error(f"{where}: 'parents' is empty: a tree has at least its root, parents = [-1]")
    if len(parents) > max_nodes:
        raise error(f"{where}: {len(parents)} nodes is more than the {max_nodes} a growmap may hold")
    bad = next((i for i, p in enumerate(parents) if not _is_int(p)), None)
    if bad is not None:
        raise error(f"{where}: parents[{bad}] = {parents[bad]!r} is not an integer")
    if parents[0] != -1:
        raise error(f"{where}: parents[0] = {parents[0]} but node 0 is the root and needs parent -1")
    for i, p in enumerate(parents[1:], start=1):
        if not 0 <= p < i:
            raise error(
                f"{where}: node {i} has parent {p}, but every parent must precede its child (0 <= parent < {i}); "
                "number the nodes so parents come first (breadth-first order does)"
            )
    return tuple(int(p) for p in parents)


def parents_from_branching(branching: object, where: str, error: type[SpecVLMError] = GrowmapError) -> tuple[int, ...]:
    """Parents of the full tree where every node at level d has branching[d] children."""
    if isinstance(branching, (str, bytes)) or not isinstance(branching, Sequence) or not branching:
        raise error(f"{where}: 'branching' must be a non-empty list of positive integers, e.g. [4, 2, 1]")
    if not all(_is_int(w) and w >= 1 for w in branching):
        raise error(f"{where}: 'branching' must hold positive integers only, got {list(branching)}")
    size, level = 1, 1
    for width in branching:
        level *= width
        size += level
        if size > MAX_NODES:
            raise error(f"{where}: branching {list(branching)} makes more than {MAX_NODES} nodes")
    return tuple(template_from_branching([int(w) for w in branching]))


def _check_provenance(prov: object, where: str) -> dict[str, Any]:
    if not isinstance(prov, dict):
        raise GrowmapError(f"{where}: 'provenance' must be an object with keys {', '.join(PROVENANCE_KEYS)}")
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    if missing:
        raise GrowmapError(f"{where}: 'provenance' lacks {', '.join(missing)} (write 'unknown' where not known)")
    wrong = [k for k in PROVENANCE_KEYS if not isinstance(prov[k], str)]
    if wrong:
        raise GrowmapError(f"{where}: provenance {', '.join(wrong)} must be strings")
    return dict(prov)


def _check_acceptance(acc: object, where: str) -> tuple[float, ...]:
    if isinstance(acc, (str, bytes)) or not isinstance(acc, Sequence) or not acc:
        raise GrowmapError(f"{where}: 'acceptance' must be a non-empty list of probabilities")
    if not all(_is_number(a) and 0.0 <= a <= 1.0 for a in acc):
        raise GrowmapError(f"{where}: 'acceptance' values must be numbers in [0, 1], got {list(acc)}")
    return tuple(float(a) for a in acc)


def _check_predicted(value: object, depth: int, where: str) -> float:
    if not _is_number(value):
        raise GrowmapError(f"{where}: 'predicted_accepted' must be a finite number, got {value!r}")
    if not 1.0 - 1e-9 <= value <= depth + 1 + 1e-9:
        raise GrowmapError(
            f"{where}: 'predicted_accepted' = {value} is impossible for a tree of depth {depth}: new tokens per "
            f"target call lie in [1, {depth + 1}] (the bonus token included)"
        )
    return float(value)


def growmap_from_dict(obj: object, where: str = "growmap", source: Path | None = None) -> Growmap:
    """Validate a parsed JSON growmap (our format) and turn it into a `Growmap`."""
    if not isinstance(obj, dict):
        raise GrowmapError(f'{where}: a growmap is a JSON object with "format": "{FORMAT}", got a {type(obj).__name__}')
    if obj.get("format") != FORMAT:
        raise GrowmapError(f'{where}: "format" must be "{FORMAT}", got {obj.get("format")!r}')
    version = obj.get("version")
    if not _is_int(version) or version != VERSION:
        raise GrowmapError(f"{where}: unsupported growmap version {version!r}: this specvlm reads version {VERSION}")
    missing = sorted(REQUIRED_KEYS - obj.keys())
    if missing:
        raise GrowmapError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(obj.keys() - REQUIRED_KEYS - OPTIONAL_KEYS)
    if unknown:
        allowed = ", ".join(sorted(REQUIRED_KEYS | OPTIONAL_KEYS))
        raise GrowmapError(f"{where}: unknown key(s) {', '.join(unknown)} (a version {VERSION} growmap has {allowed})")
    if ("parents" in obj) == ("branching" in obj):
        raise GrowmapError(f"{where}: give exactly one of 'parents' and 'branching' to define the tree")
    if "parents" in obj:
        parents = check_parents(obj["parents"], where)
    else:
        parents = parents_from_branching(obj["branching"], where)
    provenance = _check_provenance(obj["provenance"], where)
    predicted = obj.get("predicted_accepted")
    if predicted is not None:
        predicted = _check_predicted(predicted, max(node_depths(parents)), where)
    acceptance = obj.get("acceptance")
    if acceptance is not None:
        acceptance = _check_acceptance(acceptance, where)
    return Growmap(parents, provenance, predicted, acceptance, source)


# -- Sequoia .pt files ------------------------------------------------------------------------------------------
def _int_list(value: object, what: str, where: str) -> list[int]:
    if hasattr(value, "tolist"):  # a tensor
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise GrowmapError(f"{where}: {what} must be a list of integers, got {type(value).__name__}")
    if not all(_is_int(v) for v in value):
        raise GrowmapError(f"{where}: {what} must hold integers only, got {list(value)}")
    return [int(v) for v in value]


def parents_from_sequoia(obj: object, where: str = "Sequoia growmap") -> tuple[int, ...]:
    """Parents (breadth-first, siblings in rank order) from a Sequoia growmap dict; checks every key it holds.

    `Successors` and `size` define the tree and are required; `depth`, `mask`, `roots` and `branches` are checked
    against them when present.
    """
    if not isinstance(obj, dict):
        raise GrowmapError(f"{where}: a Sequoia growmap is a dict with keys {', '.join(SEQUOIA_KEYS)}")
    missing = [k for k in ("Successors", "size") if k not in obj]
    if missing:
        raise GrowmapError(
            f"{where}: missing key(s) {', '.join(missing)} (found {', '.join(map(str, obj)) or 'none'}; "
            f"a Sequoia growmap has {', '.join(SEQUOIA_KEYS)})"
        )
    size = obj["size"]
    if hasattr(size, "item") and getattr(size, "numel", lambda: 0)() == 1:
        size = size.item()
    if not _is_int(size) or not 1 <= size <= MAX_NODES:
        raise GrowmapError(f"{where}: 'size' must be an integer in [1, {MAX_NODES}], got {size!r}")
    succ_raw = obj["Successors"]
    if isinstance(succ_raw, (str, bytes)) or not isinstance(succ_raw, Sequence):
        raise GrowmapError(f"{where}: 'Successors' must be a list with one list of children per node")
    succ = [_int_list(kids, f"Successors[{i}]", where) for i, kids in enumerate(succ_raw)]
    if len(succ) != size:
        raise GrowmapError(f"{where}: 'size' says {size} nodes but 'Successors' lists {len(succ)}: the file is corrupt")
    # breadth-first renumbering: children keep their rank order, every node must be reached exactly once
    new_index, order, parents = {0: 0}, [0], [-1]
    for node in order:
        for child in succ[node]:
            if not 0 <= child < size:
                raise GrowmapError(f"{where}: node {node} has child {child}, outside the {size} nodes")
            if child in new_index:
                what = "the root" if child == 0 else f"node {child}"
                raise GrowmapError(
                    f"{where}: {what} is reached twice (again as a child of node {node}): a tree has no cycles "
                    "and each node has one parent"
                )
            new_index[child] = len(order)
            order.append(child)
            parents.append(new_index[node])
    if len(order) != size:
        lost = sorted(set(range(size)) - new_index.keys())
        raise GrowmapError(f"{where}: node(s) {lost[:10]} cannot be reached from the root (node 0)")
    old_parent = {child: node for node in range(size) for child in succ[node]}
    old_depth = [0] * size
    for node in order[1:]:
        old_depth[node] = old_depth[old_parent[node]] + 1
    if "depth" in obj:
        depth = _int_list(obj["depth"], "'depth'", where)
        if depth != old_depth:
            raise GrowmapError(f"{where}: 'depth' {depth[:16]} disagrees with the depths 'Successors' implies")
    if "mask" in obj:
        _check_sequoia_mask(obj["mask"], old_parent, size, where)
    if ("roots" in obj) != ("branches" in obj):
        raise GrowmapError(f"{where}: 'roots' and 'branches' come together; the file has only one of them")
    if "roots" in obj:
        _check_sequoia_levels(obj["roots"], obj["branches"], succ, where)
    return tuple(parents)


def _check_sequoia_mask(mask: object, old_parent: dict[int, int], size: int, where: str) -> None:
    rows = mask.tolist() if hasattr(mask, "tolist") else mask
    if not isinstance(rows, list) or len(rows) != size or not all(isinstance(r, list) and len(r) == size for r in rows):
        raise GrowmapError(f"{where}: 'mask' must be a [{size}, {size}] matrix (size x size)")
    for node in range(size):
        expected = {node}
        cur = node
        while cur in old_parent:
            cur = old_parent[cur]
            expected.add(cur)
        got = {j for j, v in enumerate(rows[node]) if v}
        if got != expected:
            raise GrowmapError(
                f"{where}: 'mask' row {node} is not node {node}'s ancestors: it disagrees with 'Successors'"
            )


def _check_sequoia_levels(roots: object, branches: object, succ: list[list[int]], where: str) -> None:
    roots = roots.tolist() if hasattr(roots, "tolist") else roots
    branches = branches.tolist() if hasattr(branches, "tolist") else branches
    if not isinstance(roots, list) or not isinstance(branches, list) or len(roots) != len(branches):
        raise GrowmapError(f"{where}: 'roots' and 'branches' must be lists of the same length (one entry per level)")
    for level, (nodes, widths) in enumerate(zip(roots, branches, strict=True)):
        nodes = _int_list(nodes, f"roots[{level}]", where)
        widths = _int_list(widths, f"branches[{level}]", where)
        if len(nodes) != len(widths):
            raise GrowmapError(f"{where}: roots[{level}] and branches[{level}] differ in length")
        for node, width in zip(nodes, widths, strict=True):
            if not 0 <= node < len(succ) or len(succ[node]) != width:
                raise GrowmapError(
                    f"{where}: branches[{level}] gives node {node} {width} children but 'Successors' disagrees"
                )


def _load_torch(path: Path) -> object:
    return load_torch_file(path, "growmaps", GrowmapError)


# -- files --------------------------------------------------------------------------------------------------------
def load_growmap(path: str | os.PathLike) -> Growmap:
    """Read and validate a growmap: our JSON format (.json), a Sequoia torch file (.pt / .pth), or Medusa/EAGLE
    tree choices (`medusa_choices.py:mc_sim_7b_63`, or a JSON list of rank paths; see `tree_choices`)."""
    path, choices_name = split_choices_spec(os.fspath(path))
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise GrowmapError(f"growmap file not found: {path}{hint}")
    suffix = path.suffix.lower()
    if suffix == ".py":
        return _choices_growmap(path, load_choices(path, choices_name))
    if suffix not in (".json", ".pt", ".pth"):
        with path.open("rb") as fh:
            head = fh.read(64).lstrip()
        suffix = ".json" if head.startswith(b"{") else ".pt"
    if suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GrowmapError(
                f"{path} is not valid JSON ({err}): a growmap is a JSON object (or a Sequoia .pt)"
            ) from err
        if isinstance(obj, list) and obj and all(isinstance(p, list) for p in obj):  # Medusa/EAGLE tree choices
            return _choices_growmap(path, parents_from_choices(obj, str(path)))
        return growmap_from_dict(obj, str(path), source=path)
    parents = parents_from_sequoia(_load_torch(path), str(path))
    provenance = {k: "unknown" for k in PROVENANCE_KEYS}
    provenance.update(command=f"converted from the Sequoia growmap {path.name}", source_format="sequoia-pt")
    return Growmap(parents, provenance, None, None, path)


def _choices_growmap(path: Path, parents: tuple[int, ...]) -> Growmap:
    check_parents(parents, str(path))
    provenance = {k: "unknown" for k in PROVENANCE_KEYS}
    provenance.update(command=f"converted from the tree choices in {path.name}", source_format="medusa-choices")
    return Growmap(parents, provenance, None, None, path)


def growmap_dict(
    parents: Sequence[int],
    provenance: dict[str, Any],
    *,
    predicted_accepted: float | None = None,
    acceptance: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The JSON object of a growmap, validated exactly as `load_growmap` would."""
    obj: dict[str, Any] = {"format": FORMAT, "version": VERSION, "parents": [int(p) for p in parents]}
    obj["provenance"] = dict(provenance)
    if predicted_accepted is not None:
        obj["predicted_accepted"] = round(float(predicted_accepted), 6)
    if acceptance is not None:
        obj["acceptance"] = [round(float(a), 6) for a in acceptance]
    growmap_from_dict(obj, "growmap to save")
    return obj


def save_growmap(
    path: str | os.PathLike,
    parents: Sequence[int],
    provenance: dict[str, Any],
    *,
    predicted_accepted: float | None = None,
    acceptance: Sequence[float] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a validated JSON growmap (objects indented, lists on one line); returns the path."""
    path = Path(path).expanduser()
    obj = growmap_dict(parents, provenance, predicted_accepted=predicted_accepted, acceptance=acceptance)
    if path.exists() and not overwrite:
        raise GrowmapError(f"{path} already exists: pass overwrite=True (or --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compact_json(obj) + "\n", encoding="utf-8")
    return path


def compact_json(obj: Any, indent: str = "") -> str:
    """JSON with objects indented two spaces per level and every list on one line (parents stay readable)."""
    if isinstance(obj, dict) and obj:
        inner = indent + "  "
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return json.dumps(obj, ensure_ascii=False)
