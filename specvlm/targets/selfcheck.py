"""The load-time self-check: a tree forward must give the logits of the model's own one-by-one decoding.

A small tree scored in one forward must give the logits of the same tokens decoded one by one by the model's own
forward (its own cache, masks and positions, as in `generate`). A model that fails is refused, so the lossless
contract also protects families no adapter lists. Cached per model config and device."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import transformers
from transformers import DynamicCache

from ..errors import ConfigError
from ..options import cache_root, write_cache_json
from ..tree import TokenTree

if TYPE_CHECKING:
    from ..models import TargetModel

log = logging.getLogger("specvlm")

#: bump when the check changes, so older verdicts are not trusted
CHECK_VERSION = 1
#: the checked tree: a root with two children, the first with two, one grandchild with one (depth 3, 3 leaves)
PARENTS = (-1, 0, 0, 1, 1, 3)
#: the prompt is longer than any sliding window up to this length, so window handling is exercised
MAX_PROMPT = 600


@dataclass(frozen=True)
class CheckResult:
    """The largest difference between tree and one-by-one logits, relative to the logits' scale."""

    error: float
    tolerance: float
    argmax_agrees: bool

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance and self.argmax_agrees


def tolerance(dtype: torch.dtype) -> float:
    """Relative logit difference allowed between a tree forward and one-by-one forwards (summation order only)."""
    return 2e-3 if dtype == torch.float32 else 6e-2


def prompt_length(target: TargetModel) -> int:
    window = target.scheme.window
    want = 24 if window is None else window + 16
    return max(4, min(want, MAX_PROMPT, target.max_positions // 2))


def _token_pool(target: TargetModel) -> torch.Tensor:
    """Ordinary token ids: no image token, no special ids of the tokenizer, in the lower vocabulary."""
    special: set[int] = {target.image_token_id} if target.image_token_id is not None else set()
    tok = target.tokenizer
    if tok is not None:
        special |= {int(i) for i in getattr(tok, "all_special_ids", []) or []}
    special |= set(target.eos)
    pool = torch.arange(min(target.vocab_size, 32000))
    keep = torch.tensor([int(i) not in special for i in pool.tolist()])
    return pool[keep]


@torch.inference_mode()
def run_check(target: TargetModel) -> CheckResult:
    """Score PARENTS' tree on a random prompt both ways and compare."""
    gen = torch.Generator().manual_seed(1234)
    pool = _token_pool(target)
    ids = pool[torch.randint(0, pool.shape[0], (prompt_length(target),), generator=gen)].tolist()
    parents = torch.tensor(PARENTS, dtype=torch.long)
    tokens = pool[torch.randint(0, pool.shape[0], (len(PARENTS),), generator=gen)]
    tokens[0] = ids[-1]  # the root is the last prompt token
    tree = TokenTree(tokens=tokens, parents=parents)
    extra = target.scheme.token_type_input(ids, target.image_token_id)
    extra = {k: v.to(target.device) for k, v in extra.items()}
    cache = target.new_cache()
    pre = target.start(ids, cache, **extra)
    tree_logits = target.score_with_hidden(tree, cache, hidden=False, root=pre, delta=pre.delta)[0].float()  # [N, V]

    # one by one: the whole prompt through the model's own forward, then each path token after it
    prompt_cache = DynamicCache(config=target.model.config)
    first = target.model(
        input_ids=torch.tensor([ids], device=target.device),
        **target.scheme.cache_arg(prompt_cache),
        use_cache=True,
        logits_to_keep=1,
        **extra,
    ).logits[0, -1]
    reference: dict[int, torch.Tensor] = {0: first.float()}
    for leaf in tree.leaves():
        path = tree.path_to(leaf)
        cache_i = copy.deepcopy(prompt_cache)
        for step, node in enumerate(path[1:]):
            # M-RoPE models remember the rope delta of their last image prompt; generate resets it per prompt, here
            # the text-only positions are given (delta 0), as generate would compute them
            where = target.scheme.positions(torch.tensor([len(ids) + step]), 0) if target.scheme.mrope else None
            out = target.model(
                input_ids=tokens[node].view(1, 1).to(target.device),
                **target.scheme.cache_arg(cache_i),
                use_cache=True,
                **({"position_ids": where.to(target.device)} if where is not None else {}),
            )
            reference.setdefault(node, out.logits[0, -1].float())
    want = torch.stack([reference[i] for i in range(tree.size)])  # [N, V]
    scale = float(want.abs().max()) + 1e-6
    error = float((tree_logits - want).abs().max()) / scale
    agrees = bool((tree_logits.argmax(-1) == want.argmax(-1)).all())
    return CheckResult(error=error, tolerance=tolerance(target.dtype), argmax_agrees=agrees)


def check_key(target: TargetModel) -> str:
    from ..cost_timing import cost_key

    return f"{cost_key(target)}-tf{transformers.__version__}-v{CHECK_VERSION}"


def self_check(target: TargetModel, *, use_cache: bool = True) -> CheckResult | None:
    """Refuse `target` (ConfigError) when its tree forward differs from one-by-one decoding. The verdict is cached
    in $SPECVLM_CACHE/selfcheck per model class, config, device, dtype and transformers version; None = cached."""
    path = cache_root() / "selfcheck" / f"{check_key(target)}.json"
    if use_cache and path.is_file():
        try:
            if json.loads(path.read_text()).get("ok") is True:
                return None
        except (json.JSONDecodeError, OSError):
            pass
    try:
        result = run_check(target)
    except ConfigError:
        raise
    except Exception as err:  # any failure of a tree forward means the model cannot be served as it is
        raise ConfigError(
            f"specvlm cannot serve model type {target.scheme.model_type!r}: a tree forward failed in the load-time "
            f"self-check ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "decode it with its own generate()"
        ) from err
    if not result.ok:
        raise ConfigError(
            f"specvlm cannot serve model type {target.scheme.model_type!r} losslessly: a tree scored in one forward "
            f"differs from the same tokens decoded one by one (relative logit error {result.error:.2g}, allowed "
            f"{result.tolerance:.2g}, argmax {'agrees' if result.argmax_agrees else 'differs'}); decode it with its "
            "own generate()"
        )
    if not write_cache_json(path, {"ok": True, "error": result.error, "tolerance": result.tolerance}):
        log.debug("specvlm: could not cache the self-check verdict in %s", path)
    return result
