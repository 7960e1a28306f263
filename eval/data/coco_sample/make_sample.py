"""Rebuild the bundled COCO-format sample: six small PNG images of coloured shapes and their captions.

python eval/data/coco_sample/make_sample.py   (writes images/*.png and captions.json next to this file)
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
SIZE = 96

# (file name, background, shape, colour, captions)
SAMPLES = [
    ("red_circle.png", "white", "circle", "red", ["A red circle on a white background.", "A round red disc."]),
    ("blue_square.png", "yellow", "square", "blue", ["A blue square on a yellow background.", "A blue box."]),
    ("green_triangle.png", "white", "triangle", "green", ["A green triangle pointing up.", "A green triangle."]),
    ("orange_stripes.png", "navy", "stripes", "orange", ["Orange horizontal stripes on dark blue.", "Stripes."]),
    ("purple_ring.png", "lightgrey", "ring", "purple", ["A purple ring on a grey background.", "A hollow circle."]),
    ("two_dots.png", "black", "dots", "white", ["Two white dots on a black background.", "A pair of dots."]),
]


def draw(background: str, shape: str, colour: str) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), background)
    pen = ImageDraw.Draw(img)
    m = SIZE // 6
    if shape == "circle":
        pen.ellipse([m, m, SIZE - m, SIZE - m], fill=colour)
    elif shape == "square":
        pen.rectangle([m, m, SIZE - m, SIZE - m], fill=colour)
    elif shape == "triangle":
        pen.polygon([(SIZE // 2, m), (SIZE - m, SIZE - m), (m, SIZE - m)], fill=colour)
    elif shape == "stripes":
        for y in range(0, SIZE, 2 * m):
            pen.rectangle([0, y, SIZE, y + m - 1], fill=colour)
    elif shape == "ring":
        pen.ellipse([m, m, SIZE - m, SIZE - m], outline=colour, width=m)
    elif shape == "dots":
        r = m
        for cx in (SIZE // 3, 2 * SIZE // 3):
            pen.ellipse([cx - r, SIZE // 2 - r, cx + r, SIZE // 2 + r], fill=colour)
    return img


def main() -> None:
    (HERE / "images").mkdir(exist_ok=True)
    images, annotations = [], []
    for i, (name, background, shape, colour, captions) in enumerate(SAMPLES, start=1):
        draw(background, shape, colour).save(HERE / "images" / name, optimize=True)
        images.append({"id": i, "file_name": name, "width": SIZE, "height": SIZE, "license": 1})
        for caption in captions:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "caption": caption})
    data = {
        "info": {"description": "specvlm bundled COCO-format caption sample (synthetic shapes)", "version": "1.0"},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
    }
    (HERE / "captions.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
