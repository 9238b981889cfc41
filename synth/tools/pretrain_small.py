"""Pretrain the small SDXL-architecture model on phantom radiographs: the VAE, then the UNet.

This gives the offline quickstart a model whose images mean something, made by project code
from data the project draws. The text encoders stay frozen at their seeded random weights,
as SDXL's are frozen in fine-tuning; the UNet learns to read them through cross-attention
and the pooled-text time embedding. Class-specific adapters are trained afterwards with
`synth train-lora`, the same code that trains SDXL LoRAs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm import tqdm

from classifiers.data import load_gray
from synth.errors import SourceError
from synth.generate.pipeline import quiet_libraries
from synth.sources import TRAIN_SPLIT
from synth.sources.manifest import read_manifest
from synth.spec import sha256_of_json
from synth.storage import write_text_atomic
from synth.tools.small_sdxl import SmallSDXLSize, build_small_sdxl
from synth.versions import library_versions


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    batch_size: int = 32
    vae_batch_size: int = 16
    vae_steps: int = 200
    vae_learning_rate: float = 2e-3
    kl_weight: float = 1e-6  # as in latent diffusion: a near-deterministic autoencoder
    unet_steps: int = 1500
    unet_learning_rate: float = 5e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    # Captions dropped to the empty prompt, so classifier-free guidance has an unconditional
    # model to push away from (the pipeline encodes the empty negative prompt the same way).
    caption_dropout: float = 0.1
    size: SmallSDXLSize = field(default_factory=SmallSDXLSize)


def pretrain_small_sdxl(
    manifest: Path, folder: Path, settings: PretrainSettings, show_progress: bool = True
) -> dict:
    """Build the small model at `folder`, train its VAE then its UNet on the manifest's
    train split, save both in place and write pretraining.json. Returns that record."""
    quiet_libraries()
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    rows = [image for image in read_manifest(manifest) if image.split in (TRAIN_SPLIT, None)]
    if not rows:
        raise SourceError(f"{manifest}: no train-split images to pretrain on")
    pixels = _load_pixels([row.path for row in rows], settings.size.sample_size)
    captions = [row.caption or "" for row in rows]
    # The VAE stage is saved when done, so an interrupted build resumes at the UNet. Its key
    # holds the pixels, not only the manifest's path: a phantom is redrawn in place.
    vae_stage = folder / "vae-stage.json"
    stage_key = sha256_of_json(
        {
            "settings": asdict(settings),
            "manifest": str(manifest),
            "pixels": hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
        }
    )
    if _stage_digest(vae_stage) == stage_key:
        pipeline = StableDiffusionXLPipeline.from_pretrained(folder, use_safetensors=True)
        vae_losses = json.loads(vae_stage.read_text())["losses"]
        latent_mean, latent_std = _encode(pipeline.vae, pixels)
    else:
        build_small_sdxl(folder, seed=settings.seed, size=settings.size)
        pipeline = StableDiffusionXLPipeline.from_pretrained(folder, use_safetensors=True)
        vae_losses = _train_vae(pipeline.vae, pixels, settings, show_progress)
        latent_mean, latent_std = _encode(pipeline.vae, pixels)
        # Unit-variance latents, as SDXL's scaling_factor gives its UNet.
        pipeline.vae.register_to_config(scaling_factor=float(1.0 / latent_mean.std()))
        pipeline.vae.save_pretrained(folder / "vae", safe_serialization=True)
        write_text_atomic(vae_stage, json.dumps({"digest": stage_key, "losses": vae_losses}))
    scaling = pipeline.vae.config.scaling_factor
    unet_losses = _train_unet(pipeline, latent_mean, latent_std, captions, settings, show_progress)
    # Its unconditional model is the empty prompt's (caption dropout above), not SDXL's zero
    # embeddings: a call without a negative prompt must encode "" for it, as diffusers then does.
    pipeline.register_to_config(force_zeros_for_empty_prompt=False)
    pipeline.save_pretrained(folder, safe_serialization=True)

    record = {
        "manifest": manifest.name,
        "images": len(rows),
        "captions": sorted(set(captions)),
        "settings": asdict(settings),
        "vae_scaling_factor": scaling,
        "vae_loss_first_last": [_mean(vae_losses[:50]), _mean(vae_losses[-50:])],
        "unet_loss_first_last": [_mean(unet_losses[:50]), _mean(unet_losses[-50:])],
        "seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
    write_text_atomic(folder / "pretraining.json", json.dumps(record, indent=2))
    vae_stage.unlink()
    return record


def _stage_digest(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


def _load_pixels(paths: list[Path], size: int) -> torch.Tensor:
    """Images as an N x 3 x size x size tensor in [-1, 1] (grey copied to RGB, as SDXL sees)."""
    arrays = []
    for path in paths:
        try:
            grey = load_gray(path).resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as err:
            raise SourceError(f"{path}: cannot read a pretraining image ({err})") from None
        arrays.append(np.asarray(grey, dtype=np.float32))
    grey = torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1.0
    return grey.expand(-1, 3, -1, -1).contiguous()


def _batches(n_rows: int, batch_size: int, steps: int, generator: torch.Generator):
    """Row indices for each step, epoch after epoch of seeded permutations."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n_rows, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def _train_vae(vae, pixels: torch.Tensor, settings: PretrainSettings, show_progress: bool):
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.vae_steps)
    vae.train()
    losses = []
    batches = _batches(len(pixels), settings.vae_batch_size, settings.vae_steps, generator)
    for index in tqdm(batches, total=settings.vae_steps, desc="vae", disable=not show_progress):
        images = pixels[index]
        posterior = vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator
        )
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, images) + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    vae.requires_grad_(False)
    return losses


def _encode(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pixels), 64):
            posterior = vae.encode(pixels[start : start + 64]).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def _train_unet(pipeline, latent_mean, latent_std, captions, settings, show_progress):
    unet = pipeline.unet
    scaling = pipeline.vae.config.scaling_factor
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    unique = sorted(set(captions) | {""})
    with torch.no_grad():
        embeds, _, pooled, _ = pipeline.encode_prompt(unique, do_classifier_free_guidance=False)
    caption_index = torch.tensor([unique.index(caption) for caption in captions])
    empty = unique.index("")
    size = settings.size.sample_size
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)

    generator = torch.Generator().manual_seed(settings.seed + 1)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_learning_rate)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, settings.warmup_steps, settings.unet_steps
    )
    ema = EMAModel(copy.deepcopy(unet).parameters(), decay=settings.ema_decay)
    unet.train()
    unet.requires_grad_(True)
    losses = []
    batches = _batches(len(captions), settings.batch_size, settings.unet_steps, generator)
    for index in tqdm(batches, total=settings.unet_steps, desc="unet", disable=not show_progress):
        latents = latent_mean[index] + latent_std[index] * torch.randn(
            latent_mean[index].shape, generator=generator
        )
        latents = latents * scaling
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator
        )
        chosen = caption_index[index].clone()
        chosen[torch.rand(len(index), generator=generator) < settings.caption_dropout] = empty
        prediction = unet(
            noise_scheduler.add_noise(latents, noise, timesteps),
            timesteps,
            encoder_hidden_states=embeds[chosen],
            added_cond_kwargs={
                "text_embeds": pooled[chosen],
                "time_ids": time_ids.repeat(len(index), 1),
            },
        ).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
    ema.copy_to(unet.parameters())
    unet.eval()
    unet.requires_grad_(False)
    return losses


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 5) if values else None
