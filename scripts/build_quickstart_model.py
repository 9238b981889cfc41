"""Build the quickstart's model from nothing but project code: phantoms, then the small
SDXL-architecture model's VAE and UNet, then its opacity LoRA with `synth train-lora`.

    python scripts/build_quickstart_model.py

Writes models/quickstart/small-sdxl-phantom (diffusers format, with pretraining.json) and
models/quickstart/lora-opacity (with training.json). Every step is seeded; on the same
library versions and thread count the same command makes the same weights. The pretraining
phantoms use their own seed, so the base model never sees a quickstart test image; the
LoRA trains on the quickstart phantom's train split only, which its training.json proves.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from synth.sources.phantom import materialise_phantom
from synth.spec import PhantomSource, load_spec, load_training_config
from synth.tools.pretrain_small import PretrainSettings, pretrain_small_sdxl
from synth.tools.small_sdxl import SmallSDXLSize
from synth.train_lora import train_lora

ROOT = Path(__file__).resolve().parent.parent
# Sizes that train in minutes on two CPU cores and still draw a recognisable phantom at 64 px.
QUICKSTART_SIZE = SmallSDXLSize(
    text_hidden=32,
    text_layers=2,
    unet_channels=(32, 64, 64),
    time_embed_dim=16,
    vae_channels=(16, 32, 32),
    sample_size=64,
    unet_layers_per_block=1,
    norm_groups=8,
    attention_heads=(2, 4, 4),
    transformer_layers=(1, 1, 1),
)
PRETRAIN_PHANTOM = dict(count=3000, image_size=64, opacity_prevalence=0.3, difficulty=0.5, seed=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae-steps", type=int, default=200)
    parser.add_argument("--unet-steps", type=int, default=1500)
    # One thread: results then do not depend on the core count, and two builds sharing a
    # machine do not thrash each other's OpenMP pools.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    corpus = PhantomSource(kind="phantom", path=ROOT / "data/phantom-pretrain", **PRETRAIN_PHANTOM)
    model = ROOT / "models/quickstart/small-sdxl-phantom"
    settings = PretrainSettings(
        seed=0, vae_steps=args.vae_steps, unet_steps=args.unet_steps, size=QUICKSTART_SIZE
    )
    record = pretrain_small_sdxl(materialise_phantom(corpus), model, settings)
    print(
        f"model: {model} (vae loss {record['vae_loss_first_last']}, "
        f"unet loss {record['unet_loss_first_last']}, {record['seconds']} s)"
    )

    materialise_phantom(load_spec(ROOT / "specs/quickstart.yaml").source)
    summary = train_lora(load_training_config(ROOT / "specs/quickstart_lora.yaml"))
    for checkpoint in summary.output_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # resume state only; the shipped adapter needs none of it
    print(
        f"lora:  {summary.lora_file} ({summary.steps} steps, "
        f"{summary.steps_per_second:.1f} steps/s)"
    )
    print(f"built in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
