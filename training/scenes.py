"""Rendered scenes: a captioning set the project makes itself, written in COCO format (pycocotools reads it).

Every image holds one to three identical objects (one shape, one colour, one size) grouped at one place. Its
captions name the five attributes in several wordings, and `attributes_in` reads them back out of any caption, so a
model's captions are scored by attribute accuracy against the scene that was drawn.

    python -m training.scenes --out runs/scenes --train 6000 --val 300 --test 200

writes `<out>/<split>/images/*.png` and `<out>/<split>/captions.json` for each split (seeded, reproducible; the
same seed always draws the same scenes; a split's first n images do not depend on its size). The test split bundled
in eval/data/scenes_test is `python -m training.scenes --out /tmp/scenes --train 0 --val 0 --test 100` (then
copied): the first 100 test images of the training run's data, never seen in training.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

SIZE = 64  # pixels, square
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 5, "large": 9}  # radius in pixels
COUNTS = {1: "one", 2: "two", 3: "three"}
PLACES: dict[str, tuple[float, float]] = {  # centre of the group, as a fraction of the image
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "center": (0.5, 0.5),
}
ATTRIBUTES = ("count", "size", "colour", "shape", "place")


@dataclass(frozen=True)
class Scene:
    count: int
    size: str
    colour: str
    shape: str
    place: str


def random_scene(rng: random.Random) -> Scene:
    return Scene(
        count=rng.choice(tuple(COUNTS)),
        size=rng.choice(tuple(SIZES)),
        colour=rng.choice(tuple(COLOURS)),
        shape=rng.choice(SHAPES),
        place=rng.choice(tuple(PLACES)),
    )


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene on a light, slightly tinted background; objects in a row (a column at the left and right)."""
    tint = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (SIZE, SIZE), tint)
    draw = ImageDraw.Draw(img)
    r = SIZES[scene.size]
    gap = 2 * r + 4
    cx, cy = (f * SIZE for f in PLACES[scene.place])
    vertical = scene.place in ("left", "right")
    for k in range(scene.count):
        offset = (k - (scene.count - 1) / 2) * gap
        x = cx + (0 if vertical else offset) + rng.uniform(-1.5, 1.5)
        y = cy + (offset if vertical else 0) + rng.uniform(-1.5, 1.5)
        fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLOURS[scene.colour])
        box = (x - r, y - r, x + r, y + r)
        if scene.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif scene.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return img


def place_phrase(place: str) -> str:
    return {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}.get(
        place, "in the center"
    )


def captions(scene: Scene) -> list[str]:
    """Five wordings that each name all five attributes."""
    many = scene.count > 1
    noun = scene.shape + ("s" if many else "")
    count = COUNTS[scene.count]
    article = count.capitalize() if many else "A"
    where = place_phrase(scene.place)
    there = f"There {'are' if many else 'is'} {count if many else 'a'}"
    return [
        f"{article} {scene.size} {scene.colour} {noun} {where}.",
        f"{there} {scene.size} {scene.colour} {noun} {where} of the image.",
        f"{count.capitalize()} {scene.colour} {noun}, {scene.size}, {where}.",
        f"The image shows {count} {scene.size} {scene.colour} {noun} {where}.",
        f"{where.capitalize()}: {count} {scene.size} {noun} coloured {scene.colour}.",
    ]


_WORDS = {
    "count": {"one": 1, "a": 1, "an": 1, "single": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3},
    "size": {name: name for name in SIZES} | {"big": "large", "tiny": "small"},
    "colour": {name: name for name in COLOURS},
    "shape": {name: name for name in SHAPES} | {f"{name}s": name for name in SHAPES},
    "place": {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "center": "center"}
    | {"centre": "center", "middle": "center"},
}


def attributes_in(caption: str) -> dict[str, object]:
    """The first word naming each attribute in a caption (None when it names none): count, size, colour, ..."""
    words = re.findall(r"[a-z0-9]+", caption.lower())
    found: dict[str, object] = {}
    for attr in ATTRIBUTES:
        found[attr] = next((_WORDS[attr][w] for w in words if w in _WORDS[attr]), None)
    return found


def attribute_hits(caption: str, scene: Scene) -> dict[str, bool]:
    """For each attribute: does the caption name it, and correctly?"""
    said = attributes_in(caption)
    truth = asdict(scene)
    return {attr: said[attr] == truth[attr] for attr in ATTRIBUTES}


def write_split(out: Path, n: int, rng: random.Random, first_id: int) -> Path:
    """n rendered images + captions.json (COCO: images, annotations, and each image's scene under "scene")."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in tqdm(range(n), desc=out.name, unit="img", leave=False):
        image_id = first_id + k
        scene = random_scene(rng)
        name = f"{image_id:06d}.png"
        render(scene, rng).save(out / "images" / name, optimize=True)
        images.append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE, "scene": asdict(scene)})
        for text in captions(scene):
            annotations.append({"id": len(annotations) + first_id * 10, "image_id": image_id, "caption": text})
    info = {"description": "specvlm rendered scenes (training/scenes.py)", "version": "1"}
    (out / "captions.json").write_text(json.dumps({"info": info, "images": images, "annotations": annotations}))
    return out / "captions.json"


def read_scenes(captions_file: str | Path) -> dict[int, Scene]:
    """Image id -> the drawn scene, for a captions.json written by this module."""
    data = json.loads(Path(captions_file).read_text())
    return {int(img["id"]): Scene(**img["scene"]) for img in data["images"] if "scene" in img}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.scenes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the splits")
    parser.add_argument("--train", type=int, default=6000, help="training images")
    parser.add_argument("--val", type=int, default=300, help="validation images")
    parser.add_argument("--test", type=int, default=200, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    first = 1
    for split, n in (("train", args.train), ("val", args.val), ("test", args.test)):
        if n > 0:
            rng = random.Random(f"{args.seed}-{split}")
            path = write_split(Path(args.out) / split, n, rng, first)
            print(f"{split}: {n} images -> {path}")
        first += 1_000_000


if __name__ == "__main__":
    main()
