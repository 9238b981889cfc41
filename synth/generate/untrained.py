"""The untrained baseline: the spec's model with random weights, rendering the run's first samples.

Its images' FID against real data is the yardstick for the synthetic FID: what the same
architecture, sampler, prompts and seeds score before any training. Only the weights differ
from the run: the component configs, tokenizers and scheduler are the model's own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from synth.errors import ModelError
from synth.generate.pipeline import DTYPES, SCHEDULERS, quiet_libraries
from synth.generate.render import RenderSettings
from synth.plan import Plan, plan_counts
from synth.spec import Generator, Spec, sha256_of_json
from synth.storage import atomic_folder

MODEL_DIR = "model"  # inside the run's untrained/ folder, beside its data/


def untrained_plan(plan: Plan, images: int) -> Plan:
    """The baseline's samples: each class's first ones as the run makes them (same ids, seeds
    and prompts), `images` in all, split in proportion to the run's synthetic counts."""
    total = plan.total_synthetic
    counts = plan_counts(
        labels=[c.label for c in plan.classes],
        real={c.label: 0 for c in plan.classes},
        distribution={c.label: c.synthetic / total if total else 0.0 for c in plan.classes},
        total=images,
    )
    return replace(
        plan, classes=tuple(replace(c, synthetic=counts[c.label][2]) for c in plan.classes)
    )


def untrained_sha256(run_sha256: str) -> str:
    """The baseline shards' identity: they belong to one run (its model, seed, prompts)."""
    return sha256_of_json({"untrained_baseline_of": run_sha256})


def untrained_settings(
    spec: Spec, folder: Path, run_sha256: str, created_at: str
) -> RenderSettings:
    """Render settings for the baseline, building its model in `folder` unless already there."""
    if not (folder / "model_index.json").is_file():
        build_untrained_model(spec.generator, spec.seed, folder)
    generator = spec.generator.model_copy(
        update={"model": str(folder), "config": None, "vae": None}
    )
    # No LoRA: an untrained model has no trained adapter, and a LoRA trained for the real
    # weights would be meaningless on random ones. The classes stay, for their prompt kind
    # (listed or from_source), which decides what happens to a long prompt.
    return RenderSettings(
        generator=generator,
        classes={
            label: cls.model_copy(update={"lora": None}) for label, cls in spec.classes.items()
        },
        spec_sha256=untrained_sha256(run_sha256),
        created_at=created_at,
        image_format=spec.output.image_format,
    )


def build_untrained_model(generator: Generator, seed: int, folder: Path) -> Path:
    """The spec's SDXL pipeline (its VAE override included) with seeded random weights, saved in
    diffusers format. Only configs are read, so no weights are downloaded for a hub id."""
    model = generator.configs  # a single-file checkpoint's configs are generator.config's
    quiet_libraries()
    try:
        # A forked RNG: seeding here must not move the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(model, subfolder="unet")
            )
            vae_config = (
                AutoencoderKL.load_config(generator.vae)
                if generator.vae
                else AutoencoderKL.load_config(model, subfolder="vae")
            )
            pipeline = StableDiffusionXLPipeline(
                vae=AutoencoderKL.from_config(vae_config),
                text_encoder=CLIPTextModel(
                    CLIPTextConfig.from_pretrained(model, subfolder="text_encoder")
                ),
                text_encoder_2=CLIPTextModelWithProjection(
                    CLIPTextConfig.from_pretrained(model, subfolder="text_encoder_2")
                ),
                tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
                tokenizer_2=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2"),
                unet=unet,
                scheduler=SCHEDULERS[generator.scheduler].from_pretrained(
                    model, subfolder="scheduler"
                ),
                # the model's own convention for an absent negative prompt (zeros, or "")
                force_zeros_for_empty_prompt=StableDiffusionXLPipeline.load_config(model).get(
                    "force_zeros_for_empty_prompt", True
                ),
            )
    except (OSError, ValueError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        key = "generator.config" if generator.single_file else "generator.model"
        raise ModelError(
            f"{key} {model}: cannot read its component configs for the untrained "
            f"baseline ({reason}); give an SDXL diffusers folder, or set eval.untrained_baseline: 0"
        ) from None
    # Written aside and renamed, so a crash never leaves a half-saved model that looks complete.
    with atomic_folder(folder) as temporary:
        pipeline.to(dtype=DTYPES[generator.dtype])
        pipeline.save_pretrained(temporary, safe_serialization=True)
    return folder
