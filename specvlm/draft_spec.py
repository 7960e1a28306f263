"""The draft-spec grammar users type (`draft="trained+ngram@2"`), parsed once, without torch, by every entry point.

    spec     := "" | mixture | part "+followers" | "+followers"
    mixture  := part ("+" part)+ ["@" N]            N: the copy gate, an n-gram length (0 = off)
    part     := "trained" | "embedded" | ngram | sam | rest | layerskip | head | MODEL
    ngram    := ("ngram" | "prompt-lookup") [":" N]  1 <= N <= 16 (default 3)
    sam      := ("sam" | "suffix") [":" N]            suffix automaton of the text; N: shortest match used (default 2)
    rest     := ("rest" | "datastore") [":" PATH]     a retrieval datastore; bare: the embedded target's shipped one
    layerskip:= ("layerskip" | "layer-skip") ":" K [":" FOLDER]   1 <= K < layers; FOLDER "trained": shipped exits
    head     := ("eagle3" | "eagle" | "medusa") ":" PATH   a published EAGLE-3, EAGLE-1/2 or Medusa-1 checkpoint
    MODEL    := a hub id, a folder (a model, a trained feature draft, a published head: detected) or a .gguf file

An empty spec (None) is the default draft. A path that exists is always a MODEL, even with "+" in its name.
`drafters.build.build(spec, target, opts)` turns a parsed spec into a Drafter.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError

#: what `specvlm.load(draft=...)` and every CLI's --draft accept, for help texts
SPEC_HELP = (
    "'ngram' or 'ngram:N' (prompt lookup, n-grams up to N), 'trained' (the shipped draft of the embedded target), "
    "'sam' (a suffix automaton of the prompt and the output), 'rest[:FOLDER]' (retrieval from a datastore; bare: "
    "the embedded target's), 'layerskip:K[:FOLDER]' (the target's first K layers; FOLDER or 'trained': a trained "
    "exit), 'eagle3:PATH', "
    "'eagle:PATH' or 'medusa:PATH' (a published EAGLE-3, EAGLE-1/2 or Medusa head, folder or hub id), 'embedded' "
    "(SmolLM2-135M as a draft), 'A+B[@N]' (a mixture; N = its copy gate, 0 = off), 'SPEC+followers', or a hub id, "
    "folder or .gguf file (default: measured for the embedded target, else ngram)"
)
#: what a spec names (`DraftSpec.kind`)
DraftKind = Literal[
    "default",
    "followers",
    "mixture",
    "trained",
    "embedded",
    "ngram",
    "sam",
    "rest",
    "layerskip",
    "eagle3",
    "eagle",
    "medusa",
    "model",
]
#: the published-head prefixes (`eagle3:PATH`): the layout read is forced
HEAD_KINDS = ("eagle3", "eagle", "medusa")
NGRAM_MAX = 16


@dataclass(frozen=True)
class DraftSpec:
    """One parsed draft spec. `n`: the n-gram length, the layer-skip depth K or the mixture's copy gate;
    `path`: the layer-skip exit folder or the model's id / path; `parts`: a mixture's parts or the followers' base."""

    kind: DraftKind
    text: str = ""
    n: int | None = None
    path: str | None = None
    parts: tuple[DraftSpec, ...] = ()


def parse_spec(text: str | os.PathLike | None) -> DraftSpec:
    """`text` parsed by the grammar above; ConfigError names the mistake and the form to write."""
    if text is None:
        return DraftSpec("default")
    if isinstance(text, os.PathLike):
        return DraftSpec("model", os.fspath(text), path=os.fspath(text))
    if not isinstance(text, str):
        raise ConfigError(f"a draft spec is a string, got {type(text).__name__}")
    spec = text.strip()
    if not spec:
        return DraftSpec("default")
    if os.path.exists(spec):
        return DraftSpec("model", spec, path=spec)
    if spec.endswith("+followers"):
        return DraftSpec("followers", spec, parts=(parse_spec(spec.removesuffix("+followers") or None),))
    if "+" in spec:
        body, _, gate = spec.partition("@")  # "trained+ngram@0": the copy gate off (default 2)
        if gate and not gate.isdigit():
            raise ConfigError(f"bad mixture {spec!r}: '@N' sets the copy gate, an n-gram length (0 = off)")
        names = body.split("+")
        if any(not name.strip() for name in names):
            raise ConfigError(f"bad mixture {spec!r}: write two or more drafts joined by '+', e.g. 'trained+ngram'")
        parts = tuple(parse_spec(name) for name in names)
        return DraftSpec("mixture", spec, n=int(gate) if gate else None, parts=parts)
    if spec in ("trained", "embedded"):
        return DraftSpec("trained" if spec == "trained" else "embedded", spec)
    if re.fullmatch(r"(ngram|prompt-lookup)(:.*)?", spec):
        _, _, n = spec.partition(":")
        if n and not (n.isdigit() and 1 <= int(n) <= NGRAM_MAX):
            raise ConfigError(f"bad n-gram draft {spec!r}: use 'ngram' or 'ngram:N' with 1 <= N <= {NGRAM_MAX}")
        return DraftSpec("ngram", spec, n=int(n) if n else 3)
    if re.fullmatch(r"(sam|suffix)(:.*)?", spec):
        _, _, n = spec.partition(":")
        if n and not (n.isdigit() and 1 <= int(n) <= NGRAM_MAX):
            raise ConfigError(
                f"bad suffix draft {spec!r}: use 'sam' or 'sam:N' with N, the shortest match, 1..{NGRAM_MAX}"
            )
        return DraftSpec("sam", spec, n=int(n) if n else 2)
    if re.fullmatch(r"(rest|datastore)(:.*)?", spec):
        kind, colon, folder = spec.partition(":")
        if colon and not folder.strip():
            raise ConfigError(f"bad draft {spec!r}: write '{kind}:FOLDER' with a datastore folder, or bare 'rest'")
        return DraftSpec("rest", spec, path=folder.strip() or None)
    if re.fullmatch(r"(layerskip|layer-skip)(:.*)?", spec):
        _, _, rest = spec.partition(":")
        k, _, folder = rest.partition(":")  # K is checked against the target's layer count when built
        return DraftSpec("layerskip", spec, n=int(k) if k.isdigit() else None, path=folder or None)
    kind, colon, path = spec.partition(":")
    if colon and kind in HEAD_KINDS:
        if not path.strip():
            raise ConfigError(f"bad draft {spec!r}: write '{kind}:PATH' with PATH a folder or hub id")
        return DraftSpec(kind, spec, path=path.strip())  # type: ignore[arg-type]
    return DraftSpec("model", spec, path=spec)


def spec_arg(text: str) -> str:
    """An argparse `type=`: the spec as given, once `parse_spec` accepts it (a mistake is a usage error, before any
    weights load)."""
    try:
        parse_spec(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def spec_list_arg(text: str) -> list[str]:
    """An argparse `type=` for comma-separated specs ("trained+ngram,ngram:4"), each checked by `parse_spec`."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"expected one or more draft specs separated by commas, got {text!r}")
    return [spec_arg(spec) for spec in specs]
