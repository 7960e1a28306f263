"""The public API: `load` a Decoder, `Decoder.generate` / `stream`, and the cached-default `generate`."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedModel

from . import mini_vlm
from .builders import TreeBuilder
from .drafting import Drafter
from .engine import Request, decode
from .errors import ConfigError, ImageError, PromptError
from .models import LoadOptions, ModelSpec, TargetModel, load_embedded, load_model, resolve_device, resolve_dtype
from .sampling import Sampling
from .stats import GenerationStats
from .stopping import StopStrings
from .targets.scheme import PER_TOKEN_INPUTS
from .targets.selfcheck import self_check
from .trees import make_tree
from .vlm import ImagePrompt, handles_images, image_token_runs, prepare, split_inputs

PromptLike = str | Sequence[int] | torch.Tensor


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

    def __init__(self, target: TargetModel, drafter: Drafter, tree: TreeBuilder | str | None = None):
        self.target = target
        self.drafter = for_target(drafter, target)
        self.default_tree = make_tree(tree, drafter.default_tree)  # a trained draft brings its own best tree

    @property
    def tokenizer(self) -> Any | None:
        return self.target.tokenizer

    # -- prompts ---------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: PromptLike, *, chat: bool = True) -> list[int]:
        """Token ids for the target: a str goes through the chat template, ids are used as given."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty: give some text, or a list of token ids")
            tok = self.tokenizer
            if tok is None:
                raise PromptError("this target was given without a tokenizer: pass the prompt as a list of token ids")
            if chat and getattr(tok, "chat_template", None):
                ids = tok.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
                )
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
            else:
                ids = tok(prompt)["input_ids"]
            ids = [int(i) for i in ids]
        else:
            if isinstance(prompt, torch.Tensor):
                if prompt.dim() > 2 or (prompt.dim() == 2 and prompt.shape[0] != 1):
                    raise PromptError(f"prompt tensor must be [L] or [1, L], got shape {tuple(prompt.shape)}")
                prompt = prompt.reshape(-1).tolist()
            try:
                ids = [int(i) for i in prompt]
            except (TypeError, ValueError) as err:
                raise PromptError("the prompt must be a string or a sequence of integer token ids") from err
        if not ids:
            raise PromptError("the prompt has no tokens: give some text, or at least one token id")
        bad = [i for i in ids if not 0 <= i < self.target.vocab_size]
        if bad:
            raise PromptError(
                f"token id {bad[0]} is outside the target's vocabulary [0, {self.target.vocab_size}): "
                "check that the ids come from this model's tokenizer"
            )
        if len(ids) >= self.target.max_positions:
            raise PromptError(
                f"the prompt has {len(ids)} tokens but the target's context window is {self.target.max_positions}: "
                "shorten the prompt so at least one new token fits"
            )
        return ids

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
        return Request(tuple(ids), max_new_tokens, sampling, model_inputs, {"images": images})

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
        return Request(tuple(ids), max_new_tokens, sampling, model_inputs, {"images": images})

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
                    return
                tokens.extend(step.tokens)
            yield step.tokens

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
    draft: ModelSpec | Drafter | str, target: TargetModel, opts: LoadOptions, draft_tokenizer: Any | None = None
) -> Drafter:
    """A drafter from a spec: None -> the default (for the embedded target the fastest of n-grams, trained+ngram
    and the autoregressive loop measured on this machine, drafters/measured_default.py; else n-grams),
    "ngram[:N]", "layerskip:K[:FOLDER]" (the target's first K layers, its weights shared; FOLDER: a trained exit),
    "A+B[@N]" (a mixture, N = its copy gate), "embedded" (SmolLM2-135M as a draft), a model id / path / GGUF / model
    (a llava draft comes with its processor)."""
    from drafters.feature_draft import is_feature_draft, load_feature_draft
    from drafters.model import ModelDrafter  # drafters depend on specvlm: import them lazily
    from drafters.ngram import NGramDrafter

    if isinstance(draft, Drafter):
        return draft
    if isinstance(draft, str) and draft.endswith("+followers"):
        from drafters.followers import FollowerDrafter

        return FollowerDrafter(make_drafter(draft.removesuffix("+followers") or None, target, opts, draft_tokenizer))
    if isinstance(draft, str) and "+" in draft and not os.path.exists(draft):  # e.g. "trained+ngram": one mixture
        from drafters.mixture import MixtureDrafter

        parts, _, gate = draft.partition("@")  # "trained+ngram@0": the copy gate off (default 2)
        if gate and not gate.isdigit():
            raise ConfigError(f"bad mixture {draft!r}: '@N' sets the copy gate, an n-gram length (0 = off)")
        drafters = [make_drafter(part, target, opts, draft_tokenizer) for part in parts.split("+")]
        return MixtureDrafter(drafters, copy_gate=int(gate)) if gate else MixtureDrafter(drafters)
    if draft is None and mini_vlm.is_embedded_target(target.model):  # the embedded VLM pair's own llava draft
        return make_drafter(mini_vlm.DRAFT_ALIAS, target, opts, draft_tokenizer)
    if draft is None:  # the embedded target: the fastest of n-grams / trained+ngram / ar, measured on this machine
        from drafters.shipped import fits

        if not fits(target.model):
            return NGramDrafter(max_n=3)
        from drafters.measured_default import measured_default

        choice = measured_default(target, opts)
        chosen = make_drafter(choice.draft, target, opts)
        chosen.default_tree = make_tree(choice.tree)  # the tree it was measured with
        return chosen
    if isinstance(draft, str) and draft == "trained":
        from drafters.shipped import load_shipped

        return load_shipped(target.model)
    if isinstance(draft, str) and re.fullmatch(r"(ngram|prompt-lookup)(:.*)?", draft):
        _, _, n = draft.partition(":")
        if n and not (n.isdigit() and 1 <= int(n) <= 16):
            raise ConfigError(f"bad n-gram draft {draft!r}: use 'ngram' or 'ngram:N' with 1 <= N <= 16")
        return NGramDrafter(max_n=int(n) if n else 3)
    if isinstance(draft, str) and re.fullmatch(r"(layerskip|layer-skip)(:.*)?", draft):
        return layer_skip_drafter(draft, target)
    if isinstance(draft, str) and draft == "embedded":
        model, tok = load_embedded(opts)
        drafter = ModelDrafter(model, name="embedded")
    elif isinstance(draft, (str, os.PathLike)) and is_feature_draft(draft):
        return load_feature_draft(draft, target.model)
    else:
        loaded = load_model(draft, opts)
        model, tok = loaded.model, loaded.tokenizer
        name = str(draft) if isinstance(draft, (str, os.PathLike)) else type(model).__name__
        drafter = ModelDrafter(model, name=name, processor=loaded.processor)
    drafter.check_vocab(target.vocab_size, target.tokenizer, draft_tokenizer if draft_tokenizer is not None else tok)
    return drafter


def layer_skip_drafter(spec: str, target: TargetModel) -> Drafter:
    """`"layerskip:K"`: a self-draft of the target's first K decoder layers (K in 1 .. layers - 1);
    `"layerskip:K:FOLDER"` with the trained exit for K from FOLDER (`"layerskip:K:trained"`: the shipped exits)."""
    from drafters.exits import SHIPPED_EXITS, load_exit
    from drafters.layerskip import LayerSkipDrafter, decoder_layers

    total = decoder_layers(target.model)
    _, _, rest = spec.partition(":")
    k, _, folder = rest.partition(":")
    if not k.isdigit() or not 1 <= int(k) < total:
        raise ConfigError(
            f"bad layer-skip draft {spec!r}: write 'layerskip:K' with K the number of the target's {total} decoder "
            f"layers to keep, 1 <= K <= {total - 1} (e.g. 'layerskip:{max(1, total * 3 // 4)}')"
        )
    if not folder:
        return LayerSkipDrafter(target.model, int(k))
    if folder == "trained":
        from drafters.shipped import TARGET_NAME, fits

        if not fits(target.model):
            raise ConfigError(f"'layerskip:{k}:trained' uses the exits shipped for {TARGET_NAME}; give a FOLDER")
    path = SHIPPED_EXITS if folder == "trained" else folder
    hidden = int(target.model.config.get_text_config().hidden_size)
    exit = load_exit(path, int(k), hidden, target.dtype, target.device)
    return LayerSkipDrafter(target.model, int(k), exit, exit_name=folder)


def for_target(drafter: Drafter, target: TargetModel) -> Drafter:
    """The drafter as the target needs it: a VLM target's drafter that cannot see images drafts from the text."""
    if target.image_token_id is None or handles_images(drafter):
        return drafter
    from drafters.text_only import TextOnlyDrafter

    return TextOnlyDrafter(drafter, target.image_token_id)


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
    return Decoder(tm, make_drafter(draft, tm, opts), tree)


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
