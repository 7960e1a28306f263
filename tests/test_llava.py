"""LLaVA targets and drafts: greedy output equals transformers' own `generate`, and the image prefix sits in both
caches where it belongs. Tiny random llava models (CLIP 32x32 / patch 8 -> 16 image tokens, Llama text) in float32.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import perturbed_copy, tiny_llama
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, PreTrainedModel

import specvlm
from drafters import MixtureDrafter, ModelDrafter, NGramDrafter
from drafters.model import ModelSession
from drafters.text_only import TextOnlyDrafter
from specvlm.builders import ChainTree
from specvlm.drafting import DraftContext, Drafter, DraftSession
from specvlm.models import TargetModel
from specvlm.trees import TREE_NAMES
from specvlm.vlm import ImagePrompt, load_image, remap_image_tokens, strip_image_tokens, to_rgb

VOCAB = 96
IMAGE = 95  # the image token id of the small-vocabulary models
FEATURES = 16  # (32 / 8) ** 2 patches; the CLS token is dropped ("default" strategy)
NEW_TOKENS = 16
#: a chain at its fixed depth: a copy draft costs as much as the target, so a chain sized for tokens/s drafts little,
#: and these tests read the draft cache's correctness off how many tokens full chains get accepted
FULL_CHAIN = ChainTree(hardware_aware=False)


def tiny_llava(
    seed: int, layers: int = 2, vocab: int = VOCAB, image_token: int = IMAGE, hidden: int = 64
) -> LlavaForConditionalGeneration:
    """A float32 random llava: CLIP vision tower (32x32, patch 8), projector, Llama text model with a large init."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.25,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token)
    return LlavaForConditionalGeneration(config).eval()


def make_prompts() -> list[tuple[list[int], torch.Tensor]]:
    """(ids, pixel_values): text, one image's 16 tokens, text; the last one has two images."""
    g = torch.Generator().manual_seed(11)
    out = []
    for images in (1, 1, 1, 2):
        ids = torch.randint(0, IMAGE, (3,), generator=g).tolist()
        for _ in range(images):
            ids += [IMAGE] * FEATURES + torch.randint(0, IMAGE, (4,), generator=g).tolist()
        out.append((ids, torch.randn(images, 3, 32, 32, generator=g)))
    return out


PROMPTS = make_prompts()


def hf_greedy(model: PreTrainedModel, ids: list[int], pixel_values: torch.Tensor, n: int) -> list[int]:
    input_ids = torch.tensor([ids])
    out = model.generate(
        input_ids,
        pixel_values=pixel_values,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


def run(dec: specvlm.Decoder, tree: Any, n: int = NEW_TOKENS, prompts: list | None = None) -> tuple[list, int]:
    """(token lists, target calls) over the prompts."""
    tokens, calls = [], 0
    for ids, pv in prompts or PROMPTS:
        got = dec.generate(pv, ids, max_new_tokens=n, tree=tree)
        tokens.append(got.tokens)
        calls += got.stats.target_calls
    return tokens, calls


def image_prompt(ids: list[int], pv: torch.Tensor) -> ImagePrompt:
    return ImagePrompt(IMAGE, tuple([FEATURES] * pv.shape[0]), pv)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not stall when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def target() -> LlavaForConditionalGeneration:
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def references(target: LlavaForConditionalGeneration) -> list[list[int]]:
    return [hf_greedy(target, ids, pv, NEW_TOKENS) for ids, pv in PROMPTS]


DRAFTS = {
    "llava": lambda t: ModelDrafter(tiny_llava(seed=9, layers=1)),
    "perturbed": lambda t: ModelDrafter(perturbed_copy(t, scale=0.3, seed=1)),
    "copy": lambda t: ModelDrafter(copy.deepcopy(t)),
    "text": lambda t: ModelDrafter(tiny_llama(seed=3, layers=1)),
    "ngram": lambda t: NGramDrafter(max_n=3),
}


# -- equivalence ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(DRAFTS))
@pytest.mark.parametrize("tree", TREE_NAMES)
def test_llava_equals_hf_greedy(
    target: LlavaForConditionalGeneration, references: list[list[int]], kind: str, tree: str
) -> None:
    dec = specvlm.load(target, DRAFTS[kind](target))
    assert isinstance(dec.drafter, TextOnlyDrafter) == (kind in ("text", "ngram"))
    # the copy's full chains show that its cache holds the image prefix
    builder = FULL_CHAIN if (kind, tree) == ("copy", "chain") else tree
    tokens, calls = run(dec, builder)
    for (ids, _), got, ref in zip(PROMPTS, tokens, references, strict=True):
        assert got == ref, f"prompt {ids}: {got} != {ref}"
    if tree == "ar":
        assert calls == len(PROMPTS) * NEW_TOKENS
    if kind == "copy" and tree in ("chain", "static"):
        # a draft identical to the target accepts every drafted token: its cache holds the same image prefix
        assert len(PROMPTS) * NEW_TOKENS / calls >= 4.0, f"only {len(PROMPTS) * NEW_TOKENS / calls:.2f} tokens/call"


class BlindDrafter(Drafter):
    """A llava draft whose session never gets the pixel values: image tokens in its ids, no image features."""

    name = "blind"
    handles_images = True

    def __init__(self, model: PreTrainedModel):
        self.model = model

    def session(self, context: DraftContext) -> DraftSession:
        return ModelSession(self.model, list(context.prompt_ids), context.vocab_size)


def test_copy_draft_needs_the_image(target: LlavaForConditionalGeneration, references: list[list[int]]) -> None:
    """The same weights accept far fewer tokens when the draft's cache lacks the image prefix."""
    total = len(PROMPTS) * NEW_TOKENS
    rates = {}
    for name, drafter in {
        "with image": ModelDrafter(copy.deepcopy(target)),
        "blind": BlindDrafter(copy.deepcopy(target)),
        "text only": TextOnlyDrafter(ModelDrafter(copy.deepcopy(target)), IMAGE),
    }.items():
        tokens, calls = run(specvlm.load(target, drafter), FULL_CHAIN)
        assert tokens == references  # still lossless
        rates[name] = total / calls
    assert rates["with image"] >= 4.0, rates
    assert rates["blind"] < rates["with image"] / 2, rates
    assert rates["text only"] < rates["with image"] / 2, rates


def test_llava_draft_in_a_mixture_keeps_its_image(
    target: LlavaForConditionalGeneration, references: list[list[int]]
) -> None:
    """A mixture declares what its parts take: with a llava part it handles images, the llava part gets the image
    and the n-gram part the text. Before, the mixture declared nothing, was wrapped text-only, and its llava part
    drafted blind."""
    mixture = MixtureDrafter([ModelDrafter(copy.deepcopy(target)), NGramDrafter()], copy_gate=0)
    text_mixture = MixtureDrafter([ModelDrafter(tiny_llama(seed=3, layers=1)), NGramDrafter()])
    assert mixture.handles_images and not text_mixture.handles_images
    dec = specvlm.load(target, mixture)
    assert dec.drafter is mixture  # not wrapped in TextOnlyDrafter
    assert isinstance(specvlm.load(target, text_mixture).drafter, TextOnlyDrafter)
    ids, pv = PROMPTS[0]
    with torch.inference_mode():
        session = mixture.session(DraftContext(tuple(ids), VOCAB, images=image_prompt(ids, pv)))
        llava, ngram = session.sessions
        llava.prefill(ids[-1])
    assert llava.cache.get_seq_length() == len(ids)  # the image prefix is in the llava part's cache
    assert ngram.seq == strip_image_tokens(ids, IMAGE)  # the n-gram part sees the text
    tokens, calls = run(dec, FULL_CHAIN)
    assert tokens == references
    blind_tokens, blind_calls = run(specvlm.load(target, TextOnlyDrafter(mixture, IMAGE)), FULL_CHAIN)
    assert blind_tokens == references
    assert calls < blind_calls / 1.5, (calls, blind_calls)  # seeing the image, the copy accepts far more


# -- the image prefix in the caches --------------------------------------------------------------------------------
def cache_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


@torch.inference_mode()
def test_target_cache_after_prefill_equals_a_direct_forward(target: LlavaForConditionalGeneration) -> None:
    ids, pv = PROMPTS[0]
    tm = TargetModel(target)
    cache = tm.new_cache()
    tm.prefill(ids[:-1], cache, pixel_values=pv)
    assert cache.get_seq_length() == len(ids) - 1
    direct = target(input_ids=torch.tensor([ids[:-1]]), pixel_values=pv, use_cache=True).past_key_values
    for (k, v), (k2, v2) in zip(cache_kv(cache), cache_kv(direct), strict=True):
        torch.testing.assert_close(k, k2)
        torch.testing.assert_close(v, v2)
    blind = tm.new_cache()
    tm.prefill(ids[:-1], blind)  # image tokens as plain embeddings: a missing prefix
    first = ids.index(IMAGE)
    keys, blind_keys = cache_kv(cache)[0][0], cache_kv(blind)[0][0]  # [1, H, L, D]
    torch.testing.assert_close(keys[:, :, :first], blind_keys[:, :, :first])  # the text before the image agrees
    assert (keys[:, :, first : first + FEATURES] - blind_keys[:, :, first : first + FEATURES]).abs().max() > 0.1


@torch.inference_mode()
def test_root_logits_equal_the_full_forward_and_positions_matter(target: LlavaForConditionalGeneration) -> None:
    """The tree's root is scored after the image prefix at position L-1; one position off changes the logits."""
    ids, pv = PROMPTS[1]
    tm = TargetModel(target)
    full = target(input_ids=torch.tensor([ids]), pixel_values=pv).logits[0, -1]  # [V]
    logits = {}
    for shift in (0, 1):
        cache = tm.new_cache()
        tm.prefill(ids[:-1], cache, pixel_values=pv)
        pos = torch.tensor([[len(ids) - 1 + shift]])
        logits[shift] = target(input_ids=torch.tensor([ids[-1:]]), position_ids=pos, cache=cache).logits[0, -1]
    torch.testing.assert_close(logits[0], full, atol=1e-4, rtol=1e-4)
    assert (logits[1] - full).abs().max() > 1e-2
    # the image placed two tokens later in the ids is a different prompt: the logits move
    moved = ids[:1] + ids[3 : 3 + FEATURES] + ids[1:3] + ids[3 + FEATURES :]
    assert moved.count(IMAGE) == FEATURES and moved.index(IMAGE) != ids.index(IMAGE)
    other = target(input_ids=torch.tensor([moved]), pixel_values=pv).logits[0, -1]
    assert (other - full).abs().max() > 1e-2


@torch.inference_mode()
def test_llava_draft_cache_holds_the_image_prefix(target: LlavaForConditionalGeneration) -> None:
    ids, pv = PROMPTS[3]  # two images
    draft = copy.deepcopy(target)
    session = ModelDrafter(draft).session(DraftContext(tuple(ids), VOCAB, images=image_prompt(ids, pv)))
    root_logits = session.logits([0], [ids[-1]], [-1])[0]  # the first forward: prompt + pixel values
    direct = draft(input_ids=torch.tensor([ids]), pixel_values=pv, use_cache=True)
    assert session.cache.get_seq_length() == len(ids)
    for (k, v), (k2, v2) in zip(cache_kv(session.cache), cache_kv(direct.past_key_values), strict=True):
        torch.testing.assert_close(k, k2, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v, v2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(root_logits, direct.logits[0, -1], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_text_only_draft_cache_holds_the_text(target: LlavaForConditionalGeneration) -> None:
    ids, pv = PROMPTS[0]
    text = tiny_llama(seed=3, layers=1)
    session = TextOnlyDrafter(ModelDrafter(text), IMAGE).session(
        DraftContext(tuple(ids), VOCAB, images=image_prompt(ids, pv))
    )
    root_logits = session.logits([0], [ids[-1]], [-1])[0]
    stripped = [t for t in ids if t != IMAGE]
    assert stripped == strip_image_tokens(ids, IMAGE) and len(stripped) == len(ids) - FEATURES
    assert session.cache.get_seq_length() == len(stripped)  # its own positions: 0 .. len(text) - 1
    direct = text(input_ids=torch.tensor([stripped])).logits[0, -1]
    torch.testing.assert_close(root_logits, direct, atol=1e-4, rtol=1e-4)


def test_remap_image_tokens_for_a_draft_with_another_count() -> None:
    ids = [1, 2, *[IMAGE] * 4, 3, *[IMAGE] * 4, 5]
    assert remap_image_tokens(ids, IMAGE, (4, 4), IMAGE, (4, 4)) == ids
    assert remap_image_tokens(ids, IMAGE, (4, 4), 7, (2, 3)) == [1, 2, 7, 7, 3, 7, 7, 7, 5]


def test_sampling_runs_and_repeats_with_a_seed(target: LlavaForConditionalGeneration) -> None:
    dec = specvlm.load(target, ModelDrafter(perturbed_copy(target, scale=0.3, seed=1)))
    ids, pv = PROMPTS[0]
    a = dec.generate(pv, ids, max_new_tokens=8, temperature=0.8, seed=3, tree="dynamic")
    b = dec.generate(pv, ids, max_new_tokens=8, temperature=0.8, seed=3, tree="dynamic")
    assert a.tokens == b.tokens and len(a.tokens) == 8


# -- images, prompts and errors with a processor ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor(embedded_folder: Path) -> Any:
    """A LlavaProcessor: CLIP image processor at 32 px and the embedded SmolLM2 tokenizer plus `<image>`."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaProcessor

    tok = AutoTokenizer.from_pretrained(embedded_folder)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


@pytest.fixture(scope="module")
def big_llava(processor: Any) -> LlavaForConditionalGeneration:
    """A tiny llava over the SmolLM2 vocabulary + `<image>`, so the processor's ids fit."""
    tok = processor.tokenizer
    return tiny_llava(seed=4, vocab=len(tok), image_token=tok.convert_tokens_to_ids("<image>"), hidden=32)


@pytest.fixture(scope="module")
def pdec(big_llava: LlavaForConditionalGeneration, processor: Any) -> specvlm.Decoder:
    return specvlm.load(big_llava, "ngram", processor=processor)


def shapes() -> Image.Image:
    img = Image.new("RGB", (40, 30), "white")
    img.paste((200, 30, 30), (5, 5, 25, 25))
    return img


def test_text_prompt_uses_the_template_and_equals_hf(pdec: specvlm.Decoder, processor: Any) -> None:
    img = shapes()
    got = pdec.generate(img, "Describe the image.", max_new_tokens=8, tree="chain")
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nDescribe the image."}], add_generation_prompt=True, tokenize=False
    )
    expected = processor(images=[img], text=text, return_tensors="pt")
    assert got.prompt_ids == expected["input_ids"][0].tolist()
    assert got.prompt_ids.count(pdec.target.image_token_id) == FEATURES
    assert got.tokens == hf_greedy(pdec.target.model, got.prompt_ids, expected["pixel_values"], 8)
    # the same image as a path, a numpy array, and a prompt already holding the placeholder (as written)
    for image in (np.asarray(img), [img]):
        assert pdec.generate(image, "Describe the image.", max_new_tokens=8).tokens == got.tokens
    assert pdec.generate(img, got.prompt_ids, max_new_tokens=8).tokens == got.tokens
    assert pdec.generate(img, text, max_new_tokens=8).tokens == got.tokens


def test_image_file_and_two_images(pdec: specvlm.Decoder, tmp_path: Path) -> None:
    path = tmp_path / "shapes.png"
    shapes().save(path)
    assert pdec.generate(path, "Hi", max_new_tokens=4).tokens == pdec.generate(shapes(), "Hi", max_new_tokens=4).tokens
    two = pdec.generate([shapes(), Image.new("RGB", (32, 32), "blue")], "Compare.", max_new_tokens=6, tree="dynamic")
    assert two.prompt_ids.count(pdec.target.image_token_id) == 2 * FEATURES
    pv = pdec.target.processor.image_processor([shapes(), Image.new("RGB", (32, 32), "blue")], return_tensors="pt")
    assert two.tokens == hf_greedy(pdec.target.model, two.prompt_ids, pv["pixel_values"], 6)


def test_pixel_values_tensor_with_a_text_prompt(pdec: specvlm.Decoder) -> None:
    pv = pdec.target.processor.image_processor([shapes()], return_tensors="pt")["pixel_values"]
    assert pdec.generate(pv[0], "Hi", max_new_tokens=4).tokens == pdec.generate(shapes(), "Hi", max_new_tokens=4).tokens


def test_image_modes_are_converted_by_the_documented_rule() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (8, 8), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    for mode in ("L", "LA", "P", "CMYK", "1", "YCbCr"):
        assert to_rgb(Image.new(mode, (8, 8))).mode == "RGB"
    with pytest.raises(specvlm.ImageError, match="16-bit"):
        to_rgb(Image.new("I;16", (8, 8)))
    with pytest.raises(specvlm.ImageError, match="16-bit"):
        to_rgb(Image.new("F", (8, 8)))
    assert load_image(np.zeros((4, 5, 3), dtype=np.uint8)).size == (5, 4)


@pytest.mark.parametrize(
    ("image", "prompt", "error", "words"),
    [
        (None, "Hi", specvlm.ImageError, "vision-language model"),
        ("missing.png", "Hi", specvlm.ImageError, "not found"),
        ("https://example.com/cat.jpg", "Hi", specvlm.ImageError, "URL"),
        (np.zeros((8, 8, 3), dtype=np.uint16), "Hi", specvlm.ImageError, "uint8"),
        (np.zeros((8, 8, 3), dtype=np.float32), "Hi", specvlm.ImageError, "uint8"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "Hi", specvlm.ImageError, "shape"),
        (Image.new("I;16", (8, 8)), "Hi", specvlm.ImageError, "16-bit"),
        ([], "Hi", specvlm.ImageError, "empty"),
        (42, "Hi", specvlm.ImageError, "PIL image"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.long), "Hi", specvlm.ImageError, "float"),
        (torch.zeros(1, 3, 64, 64), "Hi", specvlm.ImageError, "do not fit"),
        ("shapes", "<image> and <image>", specvlm.PromptError, "placeholder"),
        ("shapes", [1, 2, 3], specvlm.PromptError, "0 image tokens"),
        ("shapes", "", specvlm.PromptError, "empty"),
    ],
)
def test_bad_images_and_prompts(pdec: specvlm.Decoder, image: Any, prompt: Any, error: type, words: str) -> None:
    image = shapes() if isinstance(image, str) and image == "shapes" else image
    with pytest.raises(error, match=words):
        pdec.generate(image, prompt, max_new_tokens=2)
    assert len(pdec.generate(shapes(), "Hi", max_new_tokens=2).tokens) == 2  # the decoder still works


def test_corrupt_and_truncated_files(pdec: specvlm.Decoder, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(specvlm.ImageError, match="cannot read image"):
        pdec.generate(bad, "Hi", max_new_tokens=2)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(specvlm.ImageError, match="cannot read image"):
        pdec.generate(cut, "Hi", max_new_tokens=2)


def test_image_token_count_must_match(pdec: specvlm.Decoder) -> None:
    ok = pdec.generate(shapes(), "Hi", max_new_tokens=2).prompt_ids
    token = pdec.target.image_token_id
    short = [t for i, t in enumerate(ok) if not (t == token and i == ok.index(token))]  # one image token fewer
    with pytest.raises(specvlm.PromptError, match=f"{FEATURES - 1} image tokens"):
        pdec.generate(shapes(), short, max_new_tokens=2)
    with pytest.raises(specvlm.PromptError, match="2 image"):
        pdec.generate([shapes(), shapes()], ok, max_new_tokens=2)
    with pytest.raises(specvlm.PromptError, match="ends with an image token"):
        pdec.generate(shapes(), ok[: ok.index(token)] + [token] * FEATURES, max_new_tokens=2)


def test_without_processor_only_pixel_values_work(target: LlavaForConditionalGeneration) -> None:
    dec = specvlm.load(target, "ngram")
    with pytest.raises(specvlm.ImageError, match="processor"):
        dec.generate(shapes(), PROMPTS[0][0], max_new_tokens=2)
    with pytest.raises(specvlm.PromptError, match="tokenizer"):
        dec.generate(PROMPTS[0][1], "Describe.", max_new_tokens=2)


def test_text_target_refuses_an_image() -> None:
    with pytest.raises(specvlm.ImageError, match="text-only"):
        specvlm.load(tiny_llama(seed=0), "ngram").generate(shapes(), [1, 2, 3], max_new_tokens=2)


def test_mismatched_vocabularies_are_refused(
    processor: Any, big_llava: LlavaForConditionalGeneration, embedded_folder: Path
) -> None:
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(embedded_folder)
    other.add_special_tokens({"additional_special_tokens": ["<other>"]})  # the id `<image>` has in the target
    drafter = ModelDrafter(tiny_llama(seed=0, vocab=len(other)))
    with pytest.raises(specvlm.ModelLoadError, match="tokenizers differ"):
        drafter.check_vocab(len(processor.tokenizer), processor.tokenizer, other)
    plain = AutoTokenizer.from_pretrained(embedded_folder)  # no `<image>`: a subset, accepted
    ModelDrafter(tiny_llama(seed=0, vocab=len(plain))).check_vocab(len(processor.tokenizer), processor.tokenizer, plain)
    with pytest.raises(specvlm.ModelLoadError, match="does not fit"):
        specvlm.load(tiny_llava(seed=0), tiny_llama(seed=0, vocab=4 * VOCAB))


def test_embedded_text_draft(big_llava: LlavaForConditionalGeneration, processor: Any) -> None:
    """SmolLM2-135M drafts for a llava target that uses its tokenizer (plus `<image>`): text only, lossless."""
    dec = specvlm.load(big_llava, "embedded", processor=processor)
    assert isinstance(dec.drafter, TextOnlyDrafter)
    got = dec.generate(shapes(), "Describe the image.", max_new_tokens=6, tree="chain")
    pv = processor.image_processor([shapes()], return_tensors="pt")["pixel_values"]
    assert got.tokens == hf_greedy(big_llava, got.prompt_ids, pv, 6)
    assert got.stats.draft_prefill_s > 0


# -- the coco_caption CLI ------------------------------------------------------------------------------------------
def test_coco_caption_cli(
    big_llava: LlavaForConditionalGeneration,
    processor: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    embedded_folder: Path,
) -> None:
    from eval import coco_caption

    folder = tmp_path / "llava"
    big_llava.save_pretrained(folder)
    processor.save_pretrained(folder)
    draft = tmp_path / "draft"
    perturbed_copy(big_llava, scale=0.2, seed=2).save_pretrained(draft)
    processor.save_pretrained(draft)
    out = tmp_path / "coco.json"
    argv = ["--target", str(folder), "--draft", str(draft), "--limit", "2", "--max-new-tokens", "6"]
    code = coco_caption.main([*argv, "--tree", "chain", "--depth", "3", "--out", str(out), "--save-text"])
    assert code == 0
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["images"] == 2 and summary["identical"] == 2
    assert summary["tokens_per_call"] >= 1.0 and summary["speedup"] > 0
    assert result["prefix_cost"]["image_tokens"] == FEATURES and result["prefix_cost"]["draft_prefill_ms"] > 0
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["identical"] for r in records) and records[0]["references"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "tokens/call" in printed and "draft prefill ms" in printed
    assert summary["attribute_accuracy"] is None  # the bundled COCO sample has no drawn scenes
    # a draft with another tokenizer is refused before any image is read
    other = tmp_path / "other"
    tiny_llama(seed=1, vocab=len(processor.tokenizer)).save_pretrained(other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_folder)
    tok.add_special_tokens({"additional_special_tokens": ["<other>"]})
    tok.save_pretrained(other)
    with pytest.raises(specvlm.ModelLoadError, match="tokenizers differ"):
        coco_caption.main([*argv[:2], "--draft", str(other), "--out", str(tmp_path / "x.json")])


def test_llava_next_variable_image_counts(processor: Any) -> None:
    """llava-next tiles each image by its aspect ratio: the counts differ per image and come from the processor."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers import LlavaNextImageProcessorPil as ImageProcessor

    from specvlm.vlm import image_token_runs

    tok = processor.tokenizer
    token = tok.convert_tokens_to_ids("<image>")
    grid = [[32, 32], [32, 64], [64, 32], [64, 64]]
    image_processor = ImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grid
    )
    next_processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    small = tiny_llava(seed=5, vocab=len(tok), image_token=token, hidden=32).config
    config = LlavaNextConfig(
        vision_config=small.vision_config,
        text_config=small.text_config,
        image_token_id=token,
        image_grid_pinpoints=grid,
    )
    torch.manual_seed(5)
    model = LlavaNextForConditionalGeneration(config).eval()
    dec = specvlm.load(model, ModelDrafter(copy.deepcopy(model)), processor=next_processor)
    images = [Image.new("RGB", (64, 30), "red"), Image.new("RGB", (30, 60), "blue")]
    got = dec.generate(images, "Compare.", max_new_tokens=8, tree=FULL_CHAIN)
    runs = image_token_runs(got.prompt_ids, token)
    assert len(runs) == 2 and runs[0] != runs[1]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "<image>\n<image>\nCompare."}], add_generation_prompt=True, tokenize=False
    )
    inputs = next_processor(images=images, text=text, return_tensors="pt")
    assert got.prompt_ids == inputs["input_ids"][0].tolist()
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert got.tokens == out[0, len(got.prompt_ids) :].tolist()
    assert got.stats.mean_accepted >= 4.0  # the copy draft re-counted the target's pixel values with image_sizes
