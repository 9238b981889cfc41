"""The full-size SDXL base architecture (random weights, 3.5 billion parameters, built from
the published configs) through generation and LoRA training, on CPU in bfloat16.

Not run by default: it needs about 9 GB of memory, 8 GB of disk and about two minutes
(measured figures: docs/performance.md). Run it with

    .venv/bin/python -m pytest -m fullsize tests/test_fullsize.py -s

It prints the figures docs/performance.md quotes. Building the model, `synth run` and
`synth train-lora` each run in a process of their own, so each peak resident memory is that
step's own; the LoRA check loads the model in the test's process (its load time is measured,
not its memory).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synth.generate.pipeline import SampleGenerator
from synth.plan import PlannedSample
from synth.spec import ClassSpec, Generator, Lora
from synth.tools.sdxl_architecture import SDXL_UNET_CONFIG
from tests.conftest import write_spec

pytestmark = pytest.mark.fullsize

SIDE = 128
RANK = 4
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
PROMPT = "Chest x-ray. Lung opacity. Opacity lung base right."
FIGURES: dict[str, object] = {}


def _python(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter; its wall seconds and peak resident memory (GB)."""
    return _measured([sys.executable, "-c", code, *args])


def _measured(command: list[str]) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output[-4000:]
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB on Linux
        "output": output,
    }


@pytest.fixture(scope="module", autouse=True)
def _figures():
    """After the module: the figures for docs/performance.md, printed (with -s) and written
    to $SYNTH_FULLSIZE_FIGURES when set."""
    yield
    text = json.dumps(FIGURES, indent=2)
    print("\nfull-size figures:", text)
    if os.environ.get("SYNTH_FULLSIZE_FIGURES"):
        Path(os.environ["SYNTH_FULLSIZE_FIGURES"]).write_text(text)


@pytest.fixture(scope="module")
def fullsize(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model folder (bfloat16 safetensors) and two random rank-4 LoRAs for it."""
    folder = tmp_path_factory.mktemp("fullsize")
    built = _python(
        "import sys, torch; from synth.tools.sdxl_architecture import save_sdxl_pipeline; "
        "save_sdxl_pipeline(sys.argv[1], torch.bfloat16, 'cpu')",
        str(folder / "sdxl"),
    )
    FIGURES["build_and_save"] = {k: v for k, v in built.items() if k != "output"}
    paths = {"model": folder / "sdxl"}
    for name, seed in (("opacity", 1), ("normal", 2)):
        _python(
            "import sys, torch; from synth.tools.small_sdxl import save_random_lora; "
            "save_random_lora(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]), rank=4, "
            "dtype=torch.bfloat16)",
            str(paths["model"]),
            str(folder / name),
            str(seed),
        )
        paths[name] = folder / name / "pytorch_lora_weights.safetensors"
    return paths


def expected_lora_parameters(rank: int = RANK) -> int:
    """Rank-r LoRA on every attention projection of SDXL's UNet, from its published config:
    each transformer block has self-attention (q, k, v, out: width -> width) and cross-
    attention (q, out: width -> width; k, v: 2048 -> width), and a LoRA on an `a -> b` layer
    has r(a + b) weights."""
    widths = SDXL_UNET_CONFIG["block_out_channels"]
    depth = SDXL_UNET_CONFIG["transformer_layers_per_block"]
    layers = SDXL_UNET_CONFIG["layers_per_block"]
    cross = SDXL_UNET_CONFIG["cross_attention_dim"]
    blocks: dict[int, int] = {}  # width -> transformer blocks of that width
    for kind, width, n in zip(SDXL_UNET_CONFIG["down_block_types"], widths, depth, strict=True):
        if kind.startswith("CrossAttn"):
            blocks[width] = blocks.get(width, 0) + layers * n  # down
    blocks[widths[-1]] += depth[-1]  # the mid block
    up = zip(SDXL_UNET_CONFIG["up_block_types"], reversed(widths), reversed(depth), strict=True)
    for kind, width, n in up:
        if kind.startswith("CrossAttn"):
            blocks[width] += (layers + 1) * n  # up blocks have one layer more
    per_block = {w: rank * (4 * 2 * w + 2 * 2 * w + 2 * (cross + w)) for w in blocks}
    return sum(per_block[w] * n for w, n in blocks.items())


def test_lora_switches_classes_at_full_size_and_scale_zero_is_no_lora(fullsize):
    generator = Generator(
        model=str(fullsize["model"]), dtype="bfloat16", scheduler="euler", steps=2,
        guidance_scale=5.0, height=SIDE, width=SIDE, batch_size=1,
    )  # fmt: skip
    classes = {
        "plain": ClassSpec(prompts=[PROMPT]),
        "opacity": ClassSpec(prompts=[PROMPT], lora=Lora(path=fullsize["opacity"], scale=1.0)),
        "normal": ClassSpec(prompts=[PROMPT], lora=Lora(path=fullsize["normal"], scale=1.0)),
    }
    started = time.perf_counter()
    engine = SampleGenerator(generator, classes, device=torch.device("cpu"))
    load_seconds = time.perf_counter() - started
    # One sample, the same seed and prompt, rendered as each class: only the adapter differs.
    sample = PlannedSample("x-0", "plain", 0, PROMPT, None, 7, 0)

    def pixels(label: str, engine: SampleGenerator = engine) -> np.ndarray:
        (image,) = engine.render([PlannedSample(**{**vars(sample), "label": label})])
        return np.asarray(image.image)

    timed = time.perf_counter()
    plain = pixels("plain")
    seconds_per_image = time.perf_counter() - timed
    opacity, normal = pixels("opacity"), pixels("normal")
    with engine.adjusted(generator, {"opacity": 0.0}):
        zero = pixels("opacity")
    again = pixels("opacity")  # back to the spec's scale after the adjusted block
    FIGURES["lora_check"] = {
        "load_seconds": round(load_seconds, 1),
        "seconds_per_image": round(seconds_per_image, 2),
        "mean_abs_levels_lora_vs_none": round(float(np.abs(opacity.astype(int) - plain).mean()), 2),
        "mean_abs_levels_two_loras": round(float(np.abs(opacity.astype(int) - normal).mean()), 2),
        "scale_zero_equals_none": bool(np.array_equal(zero, plain)),
    }
    assert plain.shape[:2] == (SIDE, SIDE)
    assert np.abs(opacity.astype(int) - plain).mean() > 1.0
    assert np.abs(opacity.astype(int) - normal).mean() > 1.0
    assert np.array_equal(zero, plain)
    assert np.array_equal(again, opacity)
    del engine, pixels  # its 7 GB, before the next test's process loads its own
    gc.collect()


def test_synth_run_in_process_at_full_size(fullsize, tmp_path: Path):
    spec = {
        "name": "fullsize",
        "seed": 3,
        "source": {"kind": "counts", "counts": {"opacity": 1, "normal": 1}},
        "target": {"synthetic": {"opacity": 2, "normal": 2}},
        "generator": {
            "model": str(fullsize["model"]), "dtype": "bfloat16", "scheduler": "euler",
            "steps": 2, "guidance_scale": 5.0, "height": SIDE, "width": SIDE, "batch_size": 2,
        },
        "classes": {
            "opacity": {"prompts": [PROMPT], "lora": {"path": str(fullsize["opacity"])}},
            "normal": {"prompts": ["Chest x-ray. Normal. The lungs are clear."],
                       "lora": {"path": str(fullsize["normal"])}},
        },
        "output": {"dir": str(tmp_path / "out"), "shard_size": 4},
    }  # fmt: skip
    path = write_spec(tmp_path, spec)
    synth = str(Path(sys.executable).parent / "synth")
    measured = _measured([synth, "run", str(path), "--in-process"])
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    invocation = record["invocations"][-1]
    assert record["status"] == "complete" and invocation["shards_written"] == 1
    (load,) = invocation["model_load_seconds"]
    FIGURES["synth_run"] = {
        "seconds": measured["seconds"],
        "peak_rss_gb": measured["peak_rss_gb"],
        "model_load_seconds": load,
        # Rendering, PNG encoding and the shard's write; the model's load is not in it.
        "seconds_per_image": round(invocation["shard_seconds"]["0"] / 4, 2),
    }


def test_lora_training_at_full_size(fullsize, tmp_path: Path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(4):
        label = "opacity" if i % 2 == 0 else "normal"
        Image.fromarray(rng.integers(0, 255, (SIDE, SIDE), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i}.png"
        )
        phrase = "Lung opacity" if label == "opacity" else "Normal"
        rows.append({"path": f"images/{i}.png", "label": label, "split": "train",
                     "caption": f"Chest x-ray. {phrase}. Case {i}."})  # fmt: skip
    import pandas as pd

    pd.DataFrame(rows).to_parquet(tmp_path / "manifest.parquet")
    config = {
        "manifest": str(tmp_path / "manifest.parquet"), "model": str(fullsize["model"]),
        "mode": "single", "class": "opacity", "output_dir": str(tmp_path / "lora"),
        "resolution": SIDE, "rank": RANK, "target_modules": list(TARGETS),
        "train_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 2,
        # Every memory saver: frozen weights in bfloat16 (fp16 needs a GPU), gradient
        # checkpointing, latents and embeddings cached (always).
        "mixed_precision": "bf16", "gradient_checkpointing": True,
    }  # fmt: skip
    path = write_spec(tmp_path, config, "train.yaml")
    synth = str(Path(sys.executable).parent / "synth")
    measured = _measured([synth, "train-lora", str(path)])
    record = json.loads((tmp_path / "lora" / "training.json").read_text())
    expected = expected_lora_parameters()
    FIGURES["train_lora"] = {
        "seconds": measured["seconds"],
        "peak_rss_gb": measured["peak_rss_gb"],
        "steps": record["steps"],
        "steps_per_second": record["steps_per_second"],
        "trainable_parameters": record["trainable_parameters"],
        "expected_parameters": expected,
    }
    assert record["steps"] == 2 and len(record["loss_curve"]) == 2
    assert record["trainable_parameters"] == expected
