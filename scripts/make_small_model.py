"""Build the small random-weight SDXL-architecture model and an opacity LoRA for it, offline.

    python scripts/make_small_model.py models/small-sdxl

Writes a diffusers folder (MODEL/) and MODEL-lora-opacity/pytorch_lora_weights.safetensors,
which specs/tiny.yaml points at. Seeded, so the same command makes the same weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synth.tools.small_sdxl import build_small_sdxl, save_random_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("models/small-sdxl"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_small_sdxl(args.folder, seed=args.seed)
    lora = save_random_lora(
        args.folder, args.folder.with_name(f"{args.folder.name}-lora-opacity"), seed=args.seed + 1
    )
    print(f"model: {args.folder}\nlora:  {lora}")


if __name__ == "__main__":
    main()
