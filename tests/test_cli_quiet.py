"""The `specvlm` command on a plain run prints the answer only (no transformers bars or notices), and `--image`
without `--target` captions with the embedded VLM pair, as `specvlm.generate(image, prompt)` does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

IMAGES = Path(__file__).parent.parent / "eval" / "data" / "scenes_test" / "images"


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return subprocess.run(
        [sys.executable, "-m", "specvlm", *argv], capture_output=True, text=True, env=env, timeout=600, check=False
    )


def test_plain_run_prints_only_the_answer() -> None:
    done = run_cli("Name one fruit.", "--max-new-tokens", "6")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "an answer is printed"
    assert done.stderr == "", f"stderr should be empty on success, got: {done.stderr[:500]!r}"


def test_image_without_target_uses_the_embedded_vlm() -> None:
    image = sorted(IMAGES.glob("*.png"))[0]
    done = run_cli("--image", str(image), "Describe the image in one sentence.", "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    assert "text-only" not in done.stderr
    assert done.stdout.strip(), "a caption is printed"
