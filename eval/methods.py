"""The methods the benchmark CLIs compare (eval.bench, eval.specbench): an HF baseline, or specvlm with a tree.

A method's `label` is the name its rows, records and answer files carry, e.g. 'hf_generate', 'specvlm-dynamic',
'specvlm-dynamic[trained]-unpacked-fixed'.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the `kind` of specvlm methods (any other kind names an HF baseline, see eval.common.hf_run)
SPECVLM = "specvlm"
UNPACKED = "-unpacked"  # label suffix: plain (unpacked) target weights
FIXED = "-fixed"  # label suffix: the tree at its fixed size, not sized for tokens/s


@dataclass(frozen=True)
class Method:
    """One compared method: `kind` 'specvlm' (with a `tree` name, a `draft` spec or None for the decoder's
    default, `packed` target weights or plain ones, and `fixed`: the tree at its fixed size), or an HF baseline
    named by `kind` (e.g. 'hf_generate'), which takes none of those."""

    kind: str
    tree: str | None = None
    draft: str | None = None
    packed: bool = True
    fixed: bool = False

    def __post_init__(self) -> None:
        if self.kind == SPECVLM and self.tree is None:
            raise ValueError("a specvlm method needs a tree")
        if self.kind != SPECVLM and (self.tree, self.draft, self.packed, self.fixed) != (None, None, True, False):
            raise ValueError(f"the HF baseline {self.kind} takes no tree, draft, unpacked or fixed-size variant")

    @property
    def hf(self) -> str | None:
        """The HF baseline's method name, None for specvlm."""
        return None if self.kind == SPECVLM else self.kind

    @property
    def label(self) -> str:
        """'hf_generate', or 'specvlm-<tree>[<draft>]' with '-unpacked' and '-fixed' as they apply."""
        if self.hf is not None:
            return self.hf
        draft = f"[{self.draft}]" if self.draft else ""
        return f"{SPECVLM}-{self.tree}{draft}{'' if self.packed else UNPACKED}{FIXED if self.fixed else ''}"
