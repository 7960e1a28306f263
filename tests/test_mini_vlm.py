"""The embedded mini VLM pair: rendered scenes, the llava around the embedded SmolLM2, its draft, and the CLI defaults.

Wiring tests build the pair with fresh (untrained) vision weights in a temporary folder, so they do not depend on
the shipped weights; the last tests run the shipped pair itself.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

import specvlm
from specvlm import mini_vlm
from specvlm.embedded import load_embedded
from specvlm.options import LoadOptions
from specvlm.trees import at_fixed_size
from training import scenes
from training.mini_vlm import caption_batch, draft_text_config, prompt_ids


# -- rendered scenes -----------------------------------------------------------------------------------------------
def test_every_caption_names_its_scene() -> None:
    """Each wording of each possible scene reads back as that scene (and a wrong scene is caught)."""
    for count, size, colour, shape, place in product(
        scenes.COUNTS, scenes.SIZES, scenes.COLOURS, scenes.SHAPES, scenes.PLACES
    ):
        scene = scenes.Scene(count, size, colour, shape, place)
        for text in scenes.captions(scene):
            assert scenes.attributes_in(text) == asdict(scene), text
            assert all(scenes.attribute_hits(text, scene).values())
    other = scenes.Scene(2, "small", "red", "circle", "left")
    hits = scenes.attribute_hits("Three large blue squares at the top.", other)
    assert not any(hits.values())


def test_split_is_coco_and_reproducible(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    scenes.main(["--out", str(tmp_path / "a"), "--train", "6", "--val", "0", "--test", "3", "--seed", "5"])
    scenes.main(["--out", str(tmp_path / "b"), "--train", "0", "--val", "0", "--test", "3", "--seed", "5"])
    coco = COCO(str(tmp_path / "a" / "test" / "captions.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == 15
    a = (tmp_path / "a" / "test" / "captions.json").read_text()
    assert a == (tmp_path / "b" / "test" / "captions.json").read_text()  # the test split ignores the train size
    drawn = scenes.read_scenes(tmp_path / "a" / "test" / "captions.json")
    for img_id, scene in drawn.items():
        refs = [ann["caption"] for ann in coco.imgToAnns[img_id]]
        assert refs == scenes.captions(scene)
        with Image.open(tmp_path / "a" / "test" / "images" / coco.imgs[img_id]["file_name"]) as img:
            assert img.size == (scenes.SIZE, scenes.SIZE)
            pixels = img.convert("RGB").getcolors(scenes.SIZE * scenes.SIZE)
            assert pixels is not None and len(pixels) > 2  # background and object colours


def test_rendered_objects_sit_where_the_caption_says() -> None:
    """The object pixels' centre of mass lies in the named place, their area grows with size and count."""
    rng = random.Random(0)

    def mass(scene: scenes.Scene) -> tuple[float, float, int]:
        img = scenes.render(scene, rng).convert("RGB")
        pts = [
            (x, y)
            for y in range(scenes.SIZE)
            for x in range(scenes.SIZE)
            if min(img.getpixel((x, y))) < 200  # object colours have a channel below 200, backgrounds do not
        ]
        return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts), len(pts)

    mid = scenes.SIZE / 2
    x, _, _ = mass(scenes.Scene(1, "large", "red", "circle", "left"))
    assert x < mid - 8
    _, y, _ = mass(scenes.Scene(2, "small", "blue", "square", "bottom"))
    assert y > mid + 8
    small = mass(scenes.Scene(1, "small", "green", "square", "center"))[2]
    large = mass(scenes.Scene(1, "large", "green", "square", "center"))[2]
    three = mass(scenes.Scene(3, "large", "green", "square", "center"))[2]
    assert small * 2 < large and large * 2 < three


# -- the llava around SmolLM2 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm() -> tuple[Any, Any]:
    try:
        return load_embedded(LoadOptions(dtype=torch.float32, device=torch.device("cpu")))
    except specvlm.ModelLoadError:
        pytest.skip("the embedded SmolLM2 is not installed")


@pytest.fixture(scope="module")
def fresh_pair(smollm: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Untrained target and draft weights saved the way training saves them."""
    lm, _ = smollm
    root = tmp_path_factory.mktemp("mini")
    torch.manual_seed(0)
    target = mini_vlm.new_vlm(lm)
    mini_vlm.save_trained(target, root / "mini-llava", mini_vlm.TARGET_SHARED, {})
    draft = mini_vlm.new_vlm(lm, draft_text_config(target.config.text_config, 1))
    mini_vlm.save_trained(draft, root / "mini-llava-draft", mini_vlm.DRAFT_SHARED, {})
    return root / "mini-llava", root / "mini-llava-draft"


def test_language_model_is_the_embedded_smollm(smollm: tuple[Any, Any], fresh_pair: tuple[Path, Path]) -> None:
    """On text without images the llava's logits are SmolLM2's own; only the trained parts are stored."""
    lm, _ = smollm
    vlm = mini_vlm.assemble(fresh_pair[0], lm)
    ids = torch.tensor([[1, 4093, 198, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        assert torch.equal(vlm(input_ids=ids).logits, lm(input_ids=ids).logits)
    stored = json.loads((fresh_pair[0] / "specvlm_mini_vlm.json").read_text())
    assert stored["shared_from_smollm2"] == list(mini_vlm.TARGET_SHARED)
    from safetensors import safe_open

    with safe_open(str(fresh_pair[0] / mini_vlm.TRAINED_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in keys)


def test_materialised_folder_loads_as_a_plain_hf_llava(
    fresh_pair: tuple[Path, Path], smollm: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    folder = mini_vlm.materialise(fresh_pair[0])
    assert folder.parent == tmp_path and mini_vlm.materialise(fresh_pair[0]) == folder  # built once
    hf = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    assert mini_vlm.is_embedded_target(hf)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    img = scenes.render(scenes.Scene(2, "large", "red", "circle", "left"), random.Random(1))
    batch = processor(images=[img], text=f"{mini_vlm.IMAGE_TOKEN}Describe.", return_tensors="pt")
    assert batch["input_ids"][0].tolist().count(16) == mini_vlm.IMAGE_TOKENS
    mem = mini_vlm.assemble(fresh_pair[0], smollm[0])
    with torch.no_grad():
        a = hf(**batch).logits
        b = mem(**batch).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_a_materialised_draft_is_never_taken_for_the_target(
    fresh_pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path / "cache"))
    renamed = tmp_path / "my-run-2"  # a training output folder: its name says nothing
    shutil.copytree(fresh_pair[1], renamed)
    draft = LlavaForConditionalGeneration.from_pretrained(mini_vlm.materialise(renamed))
    assert draft.config.specvlm_embedded == "draft" and not mini_vlm.is_embedded_target(draft)


@pytest.fixture(scope="module")
def fresh_decoders(
    fresh_pair: tuple[Path, Path], smollm: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[specvlm.Decoder, specvlm.Decoder]:
    lm, tok = smollm
    processor = mini_vlm.build_processor(tok)
    target = mini_vlm.assemble(fresh_pair[0], lm)
    target.config.specvlm_embedded = "target"
    from drafters.model import ModelDrafter

    draft = ModelDrafter(mini_vlm.assemble(fresh_pair[1], lm), name="mini-llava-draft", processor=processor)
    llava_draft = specvlm.load(target, draft, processor=processor)
    text_draft = specvlm.load(target, "trained", processor=processor)
    return llava_draft, text_draft


def hf_greedy_caption(dec: specvlm.Decoder, image: Image.Image, n: int) -> tuple[list[int], list[int]]:
    request = dec.request(
        image, "Describe the image in one sentence.", max_new_tokens=n, temperature=0.0, top_p=1.0, seed=None
    )
    ids = torch.tensor([list(request.prompt_ids)])
    with torch.no_grad():
        out = dec.target.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            **(request.model_inputs or {}),
        )
    new = out[0, ids.shape[1] :].tolist()
    eos = next((i for i, t in enumerate(new) if t in dec.target.eos), None)
    return list(request.prompt_ids), new if eos is None else new[: eos + 1]


@pytest.mark.parametrize("tree", ["chain", "dynamic"])
def test_both_drafts_are_lossless_on_the_mini_vlm(
    fresh_decoders: tuple[specvlm.Decoder, specvlm.Decoder], tree: str
) -> None:
    """The llava draft (its own image prefix) and the text feature draft (text positions only): HF greedy tokens."""
    img = scenes.render(scenes.Scene(3, "small", "blue", "triangle", "top"), random.Random(2))
    for dec in fresh_decoders:
        got = dec.generate(img, "Describe the image in one sentence.", max_new_tokens=10, tree=tree)
        ids, want = hf_greedy_caption(dec, img, 10)
        assert got.prompt_ids == ids and got.tokens == want
        assert got.stats.target_calls <= len(got.tokens)


def test_training_batches_label_only_the_caption(smollm: tuple[Any, Any]) -> None:
    _, tok = smollm
    prefix = prompt_ids(mini_vlm.build_processor(tok), tok)
    assert prefix.count(16) == mini_vlm.IMAGE_TOKENS
    ids, mask, labels = caption_batch(prefix, [[5, 6, 2], [7, 2]], pad=2)
    p = len(prefix)
    assert ids.shape == (2, p + 3) and mask[1].tolist() == [1] * (p + 2) + [0]
    assert labels[0, p - 1 : p + 2].tolist() == [5, 6, 2] and (labels[0, : p - 1] == -100).all()
    assert labels[1, p - 1 : p + 1].tolist() == [7, 2] and labels[1, p + 1 :].tolist() == [-100, -100]


# -- the shipped pair ----------------------------------------------------------------------------------------------
shipped = pytest.mark.skipif(not mini_vlm.shipped(), reason="the mini VLM weights are not in this checkout")


@shipped
def test_generate_with_an_image_uses_the_embedded_vlm() -> None:
    """specvlm.generate(image, prompt) with no models: the shipped pair, identical to HF greedy."""
    path = sorted((Path(__file__).parent.parent / "eval" / "data" / "scenes_test" / "images").glob("*.png"))[0]
    got = specvlm.generate(str(path), "Describe the image in one sentence.", max_new_tokens=20)
    dec = specvlm.api.default_decoder(True)
    assert mini_vlm.is_embedded_target(dec.target.model) and "draft" in dec.drafter.name
    # the shipped draft brings its reduced head and its chain
    assert dec.drafter.head is not None and dec.default_tree == specvlm.ChainTree(depth=12)
    # its proposals are taken: counted at the chain's fixed size (the sized one follows this machine's timing)
    chain = at_fixed_size(dec.default_tree)
    fixed = specvlm.generate(str(path), "Describe the image in one sentence.", max_new_tokens=20, tree=chain)
    assert fixed.tokens == got.tokens
    assert fixed.stats.mean_accepted >= 3, fixed.stats.steps
    with Image.open(path) as img:
        _, want = hf_greedy_caption(dec, img.convert("RGB"), 20)
    assert got.tokens == want and got.text.strip()


@shipped
def test_coco_caption_defaults_run_the_pair(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from eval import coco_caption

    out = tmp_path / "coco.json"
    argv = ["--limit", "2", "--max-new-tokens", "12", "--hf", "hf_generate,hf_assisted", "--out", str(out)]
    assert coco_caption.main(argv) == 0
    result = json.loads(out.read_text())["summary"]
    # HF generate alone and assisted by the llava draft (assistant_model=) give the same captions, timed alongside
    assert {m: r["identical"] for m, r in result["hf"].items()} == {"hf_generate": 2, "hf_assisted": 2}
    assert len(result["drafts"]) == 2 and any("text only" in name for name in result["drafts"])
    for summary in result["drafts"].values():
        assert summary["images"] == 2 and summary["identical"] == 2
    assert set(result["attribute_accuracy"]) == {*scenes.ATTRIBUTES, "all five"}
    printed = capsys.readouterr().out
    assert "attribute accuracy" in printed and "2000001.png:" in printed
    assert out.with_name("coco-captions.png").read_bytes()[:4] == b"\x89PNG"
