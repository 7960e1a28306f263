"""The public API: `load` a Decoder, `Decoder.generate` / `stream`, and the cached-default `generate`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from . import mini_vlm
from .builders import TreeBuilder
from .draft_spec import DraftSpec, parse_spec
from .drafting import Drafter, for_target
from .engine import Request, decode
from .errors import ConfigError, ImageError, PromptError
from .loading import ModelSpec, load_model
from .models import TargetModel
from .options import LoadOptions, resolve_device, resolve_dtype
from .prompts import PromptLike, prompt_ids
from .sampling import Sampling
from .stats import GenerationStats
from .stopping import StopStrings
from .targets.scheme import PER_TOKEN_INPUTS
from .targets.selfcheck import self_check
from .trees import make_tree
from .vlm import ImagePrompt, image_token_runs, prepare, split_inputs


class GenerationWatch(Protocol):
    """What a Decoder tells about each finished generation, and asks to measure again (`specvlm --calibrate`)."""

    def observe(self, stats: GenerationStats) -> None: ...

    def measure_again(self) -> Any: ...


@dataclass
class Generation:
    """The result of one generation."""

    text: str
    tokens: list[int]  # new token ids
    prompt_ids: list[int]  # ids given to the target, image tokens included
    stats: GenerationStats = field(default_factory=GenerationStats)


class Decoder:
    """A target, a drafter and a default tree: generate losslessly faster than the target alone.

    With a VLM target (llava) a drafter that cannot see images is wrapped in TextOnlyDrafter: it drafts from the
    prompt's text, while the target holds the image prefix.
    """

    def __init__(
        self,
        target: TargetModel,
        drafter: Drafter,
        tree: TreeBuilder | str | None = None,
        *,
        watch: GenerationWatch | None = None,
    ):
        """`watch`: told the stats of every generation that ran to its end (a measured default draft checks its
        choice against them: `drafters.measured_default.DefaultWatch`)."""
        self.target = target
        self.drafter = for_target(drafter, target.image_token_id)
        self.default_tree = make_tree(tree, drafter.default_tree)  # a trained draft brings its own best tree
        self.watch = watch

    @property
    def tokenizer(self) -> Any | None:
        return self.target.tokenizer

    # -- prompts ---------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: PromptLike, *, chat: bool = True) -> list[int]:
        """Token ids for the target: a str goes through the chat template, ids are used as given."""
        return prompt_ids(self.target, prompt, chat=chat)

    def request(
        self,
        image: Any,
        prompt: PromptLike,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Request:
        if image is not None and self.target.image_token_id is None:
            raise ImageError(
                "this target is a text-only model: drop the image, or load a vision-language target "
                "(e.g. target='embedded-vlm')"
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        sampling = Sampling(temperature, top_p, seed)
        if inputs is not None:
            if image is not None or (isinstance(prompt, str) and prompt) or not isinstance(prompt, str):
                raise PromptError("give inputs=... (what the processor returned) or image/prompt, not both")
            return self._request_from_inputs(inputs, max_new_tokens, sampling)
        if self.target.image_token_id is None:
            return Request(tuple(self.prompt_ids(prompt)), max_new_tokens, sampling)
        # a VLM: expand the image placeholders, pixel values for both prefills, and ids only afterwards
        text_or_ids = prompt if isinstance(prompt, str) else self.prompt_ids(prompt)
        if isinstance(text_or_ids, str) and not text_or_ids.strip():
            raise PromptError("the prompt is empty: give some text, or a list of token ids")
        ids, images = prepare(self.target, image, text_or_ids)
        ids = self.prompt_ids(ids)  # vocabulary and context-window checks on the expanded ids
        model_inputs = {**self.target.scheme.token_type_input(ids, images.token_id), **images.model_inputs()}
        model_inputs = {k: (v.to(self.target.device) if torch.is_tensor(v) else v) for k, v in model_inputs.items()}
        return Request(tuple(ids), max_new_tokens, sampling, model_inputs, images)

    def _request_from_inputs(self, inputs: Mapping[str, Any], max_new_tokens: int, sampling: Sampling) -> Request:
        """A request from one sample as HF users hold it: `processor(images=..., text=..., return_tensors="pt")`."""
        ids, model_inputs = split_inputs(inputs, self.target)
        ids = self.prompt_ids(ids)
        token = self.target.image_token_id
        if token is None or "pixel_values" not in model_inputs:
            if model_inputs:
                extra = ", ".join(sorted(k for k in model_inputs if k not in PER_TOKEN_INPUTS))
                if extra:
                    raise PromptError(f"this target takes input_ids only here, got also: {extra}")
            return Request(tuple(ids), max_new_tokens, sampling)
        if ids[-1] == token:
            raise PromptError("the prompt ends with an image token: add the text of the request after the image")
        model_inputs = {**self.target.scheme.token_type_input(ids, token), **model_inputs}
        model_inputs = {k: (v.to(self.target.device) if torch.is_tensor(v) else v) for k, v in model_inputs.items()}
        pixel = {k: v for k, v in model_inputs.items() if k not in PER_TOKEN_INPUTS}
        images = ImagePrompt(
            token,
            tuple(image_token_runs(ids, token)),
            pixel.pop("pixel_values"),
            extra=pixel,
            token_inputs={k: v for k, v in model_inputs.items() if k in PER_TOKEN_INPUTS},
        )
        return Request(tuple(ids), max_new_tokens, sampling, model_inputs, images)

    # -- generation -----------------------------------------------------------------------------------------
    def stop_strings(self, stop: str | Sequence[str] | None) -> StopStrings | None:
        """Validated stop strings (None when there are none); they need a tokenizer to see the text."""
        rule = StopStrings.parse(stop)
        if rule is not None and self.tokenizer is None:
            raise ConfigError("stop strings need the target's tokenizer: load the target with one, or drop stop")
        return rule

    def _steps(
        self, request: Request, tree: TreeBuilder | str | None, stats: GenerationStats, stop: StopStrings | None
    ) -> Iterator[list[int]]:
        """The new tokens of each target call; the last chunk ends at EOS, the budget or the first stop string."""
        builder = make_tree(tree, self.default_tree)
        tokens: list[int] = []
        for step in decode(self.target, self.drafter, builder, request, stats):
            if stop is not None:
                keep = stop.tokens_to_keep(tokens + step.tokens, len(tokens), self.decode_text)
                if keep is not None:  # a stop string ended inside this step: drop the tokens after it
                    chunk = step.tokens[: keep - len(tokens)]
                    stats.steps[-1] = replace(stats.steps[-1], accepted=len(chunk))
                    yield chunk
                    self._finished(stats)
                    return
                tokens.extend(step.tokens)
            yield step.tokens
        self._finished(stats)

    def _finished(self, stats: GenerationStats) -> None:
        if self.watch is not None:
            self.watch.observe(stats)

    def _text(self, tokens: list[int], stop: StopStrings | None) -> str:
        text = self.decode_text(tokens)
        return stop.cut(text) if stop is not None else text

    def generate(
        self,
        image: Any = None,
        prompt: PromptLike = "",
        *,
        max_new_tokens: int = 128,
        tree: TreeBuilder | str | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Generation:
        """Generate up to `max_new_tokens` tokens; greedy output equals the target's own greedy output.

        `stop`: one string or several; the output ends right after the first of them to appear in the new text
        (the tokens are the shortest prefix whose text holds it, the text is cut right after it).
        `inputs`: one sample as a processor returns it (`input_ids` [1, L], `pixel_values`, `image_grid_thw`, ...),
        instead of image/prompt; the new tokens equal `model.generate(**inputs, do_sample=False)`'s.
        """
        rule = self.stop_strings(stop)
        request = self.request(
            image,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            inputs=inputs,
        )
        stats = GenerationStats()
        tokens = [t for chunk in self._steps(request, tree, stats, rule) for t in chunk]
        return Generation(
            text=self._text(tokens, rule), tokens=tokens, prompt_ids=list(request.prompt_ids), stats=stats
        )

    def stream(
        self,
        image: Any = None,
        prompt: PromptLike = "",
        *,
        max_new_tokens: int = 128,
        tree: TreeBuilder | str | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stats: GenerationStats | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as tokens are accepted (whole characters only); they join to `generate(...).text`.
        `inputs`: as in `generate`."""
        rule = self.stop_strings(stop)
        request = self.request(
            image,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            inputs=inputs,
        )
        tokens: list[int] = []
        shown = ""
        for chunk in self._steps(request, tree, stats if stats is not None else GenerationStats(), rule):
            tokens.extend(chunk)
            text = self._text(tokens, rule)
            if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                continue
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown) :]
                shown = text
        text = self._text(tokens, rule)
        if len(text) > len(shown) and text.startswith(shown):
            yield text[len(shown) :]

    def decode_text(self, tokens: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def make_drafter(
    draft: DraftSpec | ModelSpec | Drafter | str,
    target: TargetModel,
    opts: LoadOptions,
    draft_tokenizer: Any | None = None,
) -> Drafter:
    """A drafter from a draft spec (`specvlm.draft_spec`: None, "ngram[:N]", "trained", "layerskip:K[:FOLDER]",
    "A+B[@N]", "SPEC+followers", "embedded", a model id / path / GGUF) or a loaded model, for `target`."""
    return _drafter_and_watch(draft, target, opts, draft_tokenizer)[0]


def _drafter_and_watch(
    draft: DraftSpec | ModelSpec | Drafter | str,
    target: TargetModel,
    opts: LoadOptions,
    draft_tokenizer: Any | None = None,
) -> tuple[Drafter, GenerationWatch | None]:
    """The drafter, and for a measured default draft the watch that checks its choice against observed rates.

    The one way from specvlm into the draft sources: `drafters` depends on specvlm, so it is imported here, lazily."""
    from drafters import build

    drafter = build.build(draft, target, opts, draft_tokenizer)
    measured = isinstance(draft, DraftSpec) and draft.kind == "default"
    return drafter, (build.default_watch(target, opts) if measured else None)


def load(
    target: ModelSpec = None,
    draft: ModelSpec | Drafter | str = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    tree: TreeBuilder | str | None = None,
    tokenizer: Any | None = None,
    processor: Any | None = None,
    trust_remote_code: bool = False,
    pack_linears: bool | None = None,
    check: bool = True,
) -> Decoder:
    """Load a target and a draft (hub ids, folders, .gguf files or loaded models; None = embedded defaults).

    `pack_linears`: the target's tree forwards multiply by oneDNN-packed weights (CPU float32; None = when the
    linear weights fit in 4 GiB, as the packed copy doubles them; see specvlm/packed.py).

    A llava target (any config with a vision_config and an image token) is loaded with its processor; `processor`
    (and `tokenizer`) override what is found, and give an in-memory llava model what it needs for images and text.

    The target's family must be one the adapters serve (`specvlm.targets`: full or sliding-window attention, M-RoPE
    and prefix-attention VLMs), else ConfigError. With `check` (the default) the target must also pass the
    self-check once per config and device (`specvlm.targets.selfcheck`: a tree scored in one forward equals the same
    tokens decoded one by one), else ConfigError.
    """
    spec = parse_spec(draft) if isinstance(draft, (str, os.PathLike)) or draft is None else draft  # before any load
    if isinstance(target, PreTrainedModel):
        dev = next(target.parameters()).device
        opts = LoadOptions(dtype=next(target.parameters()).dtype, device=dev)
    else:
        dev = resolve_device(device)
        opts = LoadOptions(resolve_dtype(dtype, dev), dev, device_map, trust_remote_code)
    loaded = load_model(target, opts)
    tok = tokenizer if tokenizer is not None else loaded.tokenizer
    tm = TargetModel(
        loaded.model, tok, processor if processor is not None else loaded.processor, pack_linears=pack_linears
    )
    if check:
        self_check(tm)
    drafter, watch = _drafter_and_watch(spec, tm, opts)
    return Decoder(tm, drafter, tree, watch=watch)


_DEFAULTS: dict[bool, Decoder] = {}


def default_decoder(image: bool = False) -> Decoder:
    """The embedded defaults, loaded once and cached: SmolLM2-135M-Instruct with its shipped draft and n-grams, or
    with `image` the embedded mini VLM (a llava around SmolLM2, trained on rendered scenes) with its llava draft."""
    if image not in _DEFAULTS:  # the one cache of the embedded defaults, so repeated calls do not reload weights
        _DEFAULTS[image] = load(mini_vlm.TARGET_ALIAS) if image else load()
    return _DEFAULTS[image]


def generate(image: Any = None, prompt: PromptLike = "", **options: Any) -> Generation:
    """`Decoder.generate` on the embedded defaults (the mini VLM pair when an image is given)."""
    return default_decoder(image is not None).generate(image, prompt, **options)
