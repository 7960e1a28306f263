"""Medusa / EAGLE "tree choices" as static trees: a list of rank paths, read without running the file that holds it.

Medusa's `medusa_choices.py` (and EAGLE-1/2's `choices.py`) define trees as Python lists such as::

    mc_sim_7b_63 = [[0], [0, 0], [1], [0, 1], ...]

Each entry is one node below the root (the root is the target's own next token and is not listed): the path of
ranks from the root, where rank r at depth d means "the r-th most likely token of the draft's distribution at
that depth". A node's parent is its path without the last rank. This is exactly `TemplateTree`'s convention once
the nodes are ordered by (depth, path) and every node's children take ranks 0, 1, ..., k-1: so a choices list
becomes `parents`. A list whose ranks skip one (a `[0, 2]` without `[0, 1]`) has no such form and is refused.

A choices file is read with `ast`: only literal lists assigned to a name are evaluated, so a file holding code is
read as text and nothing in it runs. Spell it `FILE.py:NAME` (`medusa_choices.py:mc_sim_7b_63`); a bare `FILE.py`
holding a single list takes that one. A JSON file holding a top-level list of paths is read the same way.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

from .errors import GrowmapError


def parents_from_choices(choices: object, where: str = "tree choices") -> tuple[int, ...]:
    """Parents (node 0 = root, parents first, siblings in rank order) of a Medusa/EAGLE choices list."""
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or not choices:
        raise GrowmapError(f"{where}: tree choices are a non-empty list of rank paths, e.g. [[0], [1], [0, 0]]")
    paths: set[tuple[int, ...]] = set()
    for i, path in enumerate(choices):
        if isinstance(path, (str, bytes)) or not isinstance(path, Sequence) or not path:
            raise GrowmapError(f"{where}: entry {i} = {path!r} is not a non-empty list of ranks")
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in path):
            raise GrowmapError(f"{where}: entry {i} = {list(path)} must hold ranks (integers >= 0)")
        key = tuple(int(r) for r in path)
        if key in paths:
            raise GrowmapError(f"{where}: the path {list(key)} is listed twice")
        paths.add(key)
    ordered = sorted(paths, key=lambda p: (len(p), p))  # by depth, then rank by rank: parents first, siblings in order
    index = {(): 0}
    parents = [-1]
    for path in ordered:
        up = path[:-1]
        if up not in index:
            raise GrowmapError(f"{where}: the path {list(path)} needs its parent {list(up)}, which is not listed")
        sibling = (*up, path[-1] - 1)
        if path[-1] > 0 and sibling not in paths:
            raise GrowmapError(
                f"{where}: the path {list(path)} skips rank {path[-1] - 1} below {list(up)}: a static tree's "
                f"children take ranks 0, 1, ... in order, so list {list(sibling)} too"
            )
        index[path] = len(parents)
        parents.append(index[up])
    return tuple(parents)


def _literal_lists(path: Path) -> dict[str, object]:
    """Every `NAME = <literal>` at the top of a Python file, evaluated with `ast.literal_eval` (no code runs)."""
    try:
        module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as err:
        raise GrowmapError(f"{path} is not a readable Python file of tree choices ({err})") from err
    found: dict[str, object] = {}
    for stmt in module.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                value = ast.literal_eval(stmt.value)
            except ValueError:  # not a literal (an expression, a call): skipped, never evaluated
                continue
            if isinstance(value, (list, tuple)):
                found[stmt.targets[0].id] = value
    return found


def split_choices_spec(spec: str) -> tuple[Path, str | None]:
    """`FILE.py:NAME` -> (FILE.py, NAME); `FILE.py` or `FILE.json` -> (path, None)."""
    head, sep, name = spec.rpartition(":")
    if sep and head.lower().endswith(".py") and name.isidentifier():
        return Path(head).expanduser(), name
    return Path(spec).expanduser(), None


def load_choices(path: Path, name: str | None = None) -> tuple[int, ...]:
    """Parents from a choices file: `medusa_choices.py` (with the list's NAME unless it holds one list) or JSON."""
    where = f"{path}:{name}" if name else str(path)
    if path.suffix.lower() == ".py":
        lists = _literal_lists(path)
        if name is None:
            if len(lists) != 1:
                listed = ", ".join(sorted(lists)) or "none"
                raise GrowmapError(f"{path} holds {len(lists)} lists ({listed}): name one, as {path.name}:NAME")
            (name, choices), where = next(iter(lists.items())), f"{path}:{next(iter(lists))}"
        elif name not in lists:
            raise GrowmapError(f"{path} assigns no list named {name!r}; it has {', '.join(sorted(lists)) or 'none'}")
        else:
            choices = lists[name]
        return parents_from_choices(choices, where)
    try:
        choices = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GrowmapError(f"{path} is not valid JSON ({err})") from err
    return parents_from_choices(choices, where)
