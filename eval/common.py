"""What the eval CLIs share at run time: loading the decoder, totals over samples, error handling, HF baselines.

specvlm (and with it torch and transformers) is imported only inside the functions that need it, so `--help` and
argument mistakes answer at once instead of after a ten-second import. Argument groups live in `eval.args`, result
files, tables and plots in `eval.results`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from specvlm import Decoder, Generation
    from specvlm.models import TargetModel


T = TypeVar("T")


def load_decoder(args: argparse.Namespace) -> Decoder:
    """specvlm.load with the model flags of `add_model_args` (--device-map reaches it as `device_map`; under a
    multi-process launch on GPUs each process takes its own GPU unless --device or --device-map says otherwise)."""
    import specvlm

    draft = args.draft
    if getattr(args, "followers", False):
        draft = f"{draft or ''}+followers"
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    device = args.device
    if device is None and args.device_map is None:
        from eval.shard import local_device

        device = local_device()  # one GPU per process under a multi-process launch
    return specvlm.load(
        target=args.target,
        draft=draft,
        dtype=args.dtype,
        device=device,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
        pack_linears={"auto": None, "on": True, "off": False}[getattr(args, "pack_linears", "auto")],
    )


# -- totals over samples ---------------------------------------------------------------------------------------------
@dataclass
class Totals:
    """Sums over samples: tokens, seconds (prefill split into target and draft), target calls, tree nodes."""

    tokens: int = 0
    seconds: float = 0.0
    prefill: float = 0.0
    draft_prefill: float = 0.0
    step_seconds: float = 0.0
    calls: int = 0
    nodes: int = 0
    prompt_tokens: int = 0
    image_tokens: int = 0
    accepted: Counter[int] = field(default_factory=Counter)

    def add(self, gen: Generation, image_token: int | None = None) -> None:
        self.tokens += gen.stats.new_tokens
        self.seconds += gen.stats.seconds
        self.prefill += gen.stats.prefill_s
        self.draft_prefill += gen.stats.draft_prefill_s
        self.step_seconds += sum(step.total_s for step in gen.stats.steps)
        self.calls += gen.stats.target_calls
        self.nodes += sum(step.tree_size for step in gen.stats.steps)
        self.prompt_tokens += len(gen.prompt_ids)
        self.image_tokens += sum(1 for t in gen.prompt_ids if t == image_token)
        self.accepted.update(step.accepted for step in gen.stats.steps)

    @property
    def tok_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    @property
    def decode_tok_s(self) -> float | None:
        return self.tokens / (self.seconds - self.prefill) if self.seconds > self.prefill else None

    @property
    def tokens_per_call(self) -> float | None:
        return self.tokens / self.calls if self.calls else None

    @property
    def tree_size(self) -> float | None:
        return self.nodes / self.calls if self.calls else None

    @property
    def step_ms(self) -> float | None:
        return 1000 * self.step_seconds / self.calls if self.calls else None


# -- running a CLI -------------------------------------------------------------------------------------------------
def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'fix your input': shown as one line, not a traceback."""
    errors = sys.modules.get("specvlm.errors")  # no specvlm import, no specvlm error
    found: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError)
    return (*found, errors.SpecVLMError) if errors is not None else found


def run_cli(main_fn: Callable[[], int | None]) -> NoReturn:
    """Run a CLI main: user errors print `error: <message>` on stderr and exit 2 (tracebacks with --debug)."""
    debug = "--debug" in sys.argv[1:]
    try:
        code = main_fn()
    except KeyboardInterrupt:
        if debug:
            raise
        sys.exit(130)
    except Exception as err:
        if debug or not isinstance(err, _user_errors()):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


# -- selecting samples ---------------------------------------------------------------------------------------------
def select_range(items: Sequence[T], start: int = 0, end: int | None = None, limit: int | None = None) -> list[T]:
    """items[start:end], then at most `limit` of them."""
    if start < 0 or (end is not None and end < start) or (limit is not None and limit < 1):
        raise ValueError(
            f"bad sample range: start={start}, end={end}, limit={limit} (need 0 <= start <= end, limit >= 1)"
        )
    stop = len(items) if end is None else min(end, len(items))
    if limit is not None:
        stop = min(stop, start + limit)
    return [items[i] for i in range(start, stop)]


# -- HF baselines --------------------------------------------------------------------------------------------------
def hf_run(
    dec: Decoder,
    method: str,
    ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    prompt_lookup_tokens: int = 10,
    early_exit: int = 4,
    model_inputs: dict[str, Any] | None = None,
) -> tuple[list[int], float] | None:
    """One HF `generate` call on the decoder's target: `hf_generate` (alone), `hf_prompt_lookup`, `hf_assisted`
    (`assistant_model=` the decoder's draft model) or `hf_early_exit`. Returns the new tokens up to and including
    the first EOS and the seconds it took, or None when the method cannot run with this draft. `model_inputs`
    (e.g. pixel_values) go to the call as they are."""
    import torch

    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    if method == "hf_prompt_lookup":
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup_tokens
    elif method == "hf_assisted":
        from drafters.model import ModelDrafter

        if not isinstance(dec.drafter, ModelDrafter):
            return None  # assisted generation needs a standalone causal LM draft (not n-grams, not a feature draft)
        kwargs["assistant_model"] = dec.drafter.model
    elif method == "hf_early_exit":  # HF's layer-skip self-draft (LayerSkip), on the target's own first layers
        kwargs["assistant_early_exit"] = early_exit
    elif method != "hf_generate":
        raise ValueError(f"unknown HF method {method!r}")
    input_ids = torch.tensor([ids], device=dec.target.device)
    eos = sorted(dec.target.eos)
    start = time.perf_counter()
    with torch.inference_mode():
        out = dec.target.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            pad_token_id=eos[0] if eos else 0,
            eos_token_id=eos or None,
            **kwargs,
            **(model_inputs or {}),
        )
    seconds = time.perf_counter() - start
    new = out[0, len(ids) :].tolist()
    end = next((i for i, t in enumerate(new) if t in dec.target.eos), None)
    return (new if end is None else new[: end + 1]), seconds


def hardware(target: TargetModel) -> str:
    """The machine a figure was measured on: the GPU's name, or the CPU model and torch threads; and the dtype."""
    import torch

    dtype = str(target.dtype).replace("torch.", "")
    if target.device.type == "cuda":
        return f"{torch.cuda.get_device_name(target.device)}, {dtype}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} torch thread(s), {dtype}"
