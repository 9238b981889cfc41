"""`synth train-lora CONFIG`: train an SDXL LoRA on a prepared manifest's train split.

The thesis's two stages are the two modes: `all` (every class, one caption per image) and
`single` (one class against normal controls 1:1, its phrase leading each caption). The same
code trains the real SDXL and the small test model.

Memory savers for 24 GB GPUs: frozen weights in fp16/bf16, gradient checkpointing, and latents
and text embeddings computed once up front, after which the text encoders leave the GPU.
The loop is deterministic and resumable: micro-batch k draws its rows from a seeded
permutation of its epoch, and its noise and timesteps from seed + k, so a resumed run goes on
exactly where a checkpoint left it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params, compute_snr
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_unet_state_dict_to_peft,
    make_image_grid,
)
from peft import LoraConfig, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from PIL import Image
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from classifiers.data import load_gray
from synth.errors import SourceError
from synth.generate.pipeline import load_pretrained, quiet_libraries
from synth.preflight import LORA_WEIGHT_NAME, file_sha256
from synth.sources import TRAIN_SPLIT
from synth.sources.iu_text import LABEL_PHRASES
from synth.spec import LoraTraining
from synth.storage import atomic_folder, output_errors, write_text_atomic
from synth.versions import library_versions

_CHECKPOINT_PREFIX = "checkpoint-"


@dataclass(frozen=True)
class TrainingRow:
    path: Path
    label: str
    caption: str


@dataclass(frozen=True)
class TrainingSummary:
    output_dir: Path
    lora_file: Path
    steps: int
    resumed_from: int
    losses: list[float]
    steps_per_second: float


def training_rows(config: LoraTraining) -> list[TrainingRow]:
    """The manifest's train-split rows for this mode. Any other split is refused."""
    if not config.manifest.is_file():
        raise SourceError(f"{config.manifest}: manifest not found; run `synth data prepare` first")
    table = pq.read_table(config.manifest).to_pylist()
    if not table or "split" not in table[0] or "caption" not in table[0]:
        raise SourceError(
            f"{config.manifest}: needs split and caption columns (as `synth data prepare` "
            "writes) so that only train-split images are trained on"
        )
    base = config.manifest.parent
    train = [
        TrainingRow(base / row["path"], row["label"], row["caption"])
        for row in table
        if row["split"] == TRAIN_SPLIT and row["caption"]
    ]
    if config.mode == "all":
        rows = train
    else:
        assert config.target_class is not None
        targets = [
            _with_trigger(r, config.target_class) for r in train if r.label == config.target_class
        ]
        controls = [r for r in train if r.label == config.control]
        # 1:1 controls, chosen by a seeded hash so the choice never depends on file order.
        controls.sort(
            key=lambda r: hashlib.sha256(f"{config.seed}:{r.path.name}".encode()).hexdigest()
        )
        rows = targets + controls[: len(targets)]
    if not rows:
        raise SourceError(
            f"{config.manifest}: no train-split rows for mode {config.mode}"
            + (f" and class {config.target_class}" if config.mode == "single" else "")
        )
    return rows


def rows_sha256(rows: list[TrainingRow], manifest: Path) -> str:
    """Digest of exactly which images and captions trained the adapter."""
    listing = [(str(r.path.relative_to(manifest.parent)), r.caption) for r in rows]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def train_lora(config: LoraTraining, show_progress: bool = True) -> TrainingSummary:
    """Train, checkpointing as it goes and resuming from the newest checkpoint; then save the
    adapter and its training record. The stages, in order: the frozen components, the cached
    inputs, the LoRA and its optimizer, the train steps."""
    rows = training_rows(config)
    quiet_libraries()
    with output_errors(config.output_dir):
        config.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    if accelerator.device.type == "cpu" and config.mixed_precision == "fp16":
        raise SourceError("mixed_precision fp16 needs a GPU; use no or bf16 on CPU")
    torch.manual_seed(config.seed)  # the LoRA's initial weights
    components = load_components(config, accelerator.device)
    inputs = cache_inputs(components, rows, config, accelerator.device)
    lora = attach_lora(components, config, accelerator, len(rows))
    start_step, losses = _resume(lora.model, lora.optimizer, lora.lr_scheduler, config.output_dir)
    started = time.perf_counter()
    train_steps(lora, components, inputs, config, start_step, losses, show_progress)
    seconds = time.perf_counter() - started
    lora_file = _save_lora(lora.model, config.output_dir)
    steps_per_second = (lora.total_steps - start_step) / seconds if seconds > 0 else 0.0
    _write_training_record(config, rows, lora, losses, start_step, steps_per_second)
    return TrainingSummary(
        config.output_dir, lora_file, lora.total_steps, start_step, losses, steps_per_second
    )


@dataclass(frozen=True)
class Components:
    """The frozen SDXL model on the training device: a pipeline over its parts (to encode the
    captions and render validation images) and the noise scheduler training samples from."""

    pipeline: StableDiffusionXLPipeline
    noise_scheduler: DDPMScheduler
    dtype: torch.dtype  # the frozen weights'

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.pipeline.unet


def load_components(config: LoraTraining, device: torch.device) -> Components:
    """The model folder's tokenizers, text encoders, VAE and UNet, frozen, on `device`."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        config.mixed_precision, torch.float32
    )

    def component(cls, subfolder: str, component_dtype: torch.dtype = dtype):
        return load_pretrained(cls, config.model, component_dtype, "model", subfolder=subfolder)

    text_encoder = component(CLIPTextModel, "text_encoder")
    text_encoder_2 = component(CLIPTextModelWithProjection, "text_encoder_2")
    # The VAE runs in float32 unless it is the fp16-fix VAE: SDXL's own overflows in fp16.
    vae = (
        load_pretrained(AutoencoderKL, config.vae, dtype, "vae")
        if config.vae
        else component(AutoencoderKL, "vae", torch.float32)
    )
    unet = component(UNet2DConditionModel, "unet")
    noise_scheduler = DDPMScheduler.from_pretrained(config.model, subfolder="scheduler")
    for model in (text_encoder, text_encoder_2, vae, unet):
        model.requires_grad_(False)
        model.to(device)
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(config.model, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(config.model, subfolder="tokenizer_2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(noise_scheduler.config),
    )
    pipeline.set_progress_bar_config(disable=True)
    return Components(pipeline, noise_scheduler, dtype)


@dataclass(frozen=True)
class CachedInputs:
    """Every row's VAE latents and both encoders' text embeddings, on the CPU, and the
    validation prompts' embeddings (positive, negative, pooled, negative pooled)."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor
    validation_embeds: tuple[torch.Tensor, ...] | None


def cache_inputs(
    components: Components, rows: list[TrainingRow], config: LoraTraining, device: torch.device
) -> CachedInputs:
    """Encode every image and caption once; the text encoders then leave the GPU."""
    pipeline = components.pipeline
    latents, prompt_embeds, pooled = [], [], []
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    vae = pipeline.vae
    for row in rows:
        try:
            # The one real-image reader (16-bit stretched, not clipped), then SDXL's RGB.
            pixels = (
                load_gray(row.path)
                .convert("RGB")
                .resize((config.resolution,) * 2, Image.Resampling.LANCZOS)
            )
        except (OSError, ValueError) as err:
            raise SourceError(f"{row.path}: cannot read a training image ({err})") from None
        tensor = torch.from_numpy(_as_array(pixels)).permute(2, 0, 1)[None] / 127.5 - 1.0
        with torch.no_grad():
            distribution = vae.encode(tensor.to(device, vae.dtype)).latent_dist
            sample = distribution.mean + distribution.std * torch.randn(
                distribution.mean.shape, generator=generator
            ).to(device, distribution.mean.dtype)
            latents.append((sample * vae.config.scaling_factor).float().cpu())
            embeds, _, pooled_embeds, _ = pipeline.encode_prompt(
                row.caption, device=device, do_classifier_free_guidance=False
            )
        prompt_embeds.append(embeds.cpu())
        pooled.append(pooled_embeds.cpu())
    validation_embeds = (
        pipeline.encode_prompt(
            config.validation.prompts, device=device, do_classifier_free_guidance=True
        )
        if config.validation
        else None
    )
    for encoder in (pipeline.text_encoder, pipeline.text_encoder_2):
        encoder.to("cpu")  # not needed on the GPU again: every caption is encoded
    return CachedInputs(
        torch.cat(latents), torch.cat(prompt_embeds), torch.cat(pooled), validation_embeds
    )


@dataclass(frozen=True)
class TrainableLora:
    """The trainable adapter in the UNet, prepared by accelerate with its optimizer and
    learning-rate schedule."""

    accelerator: Accelerator
    unet: torch.nn.Module  # as accelerate wraps it
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    parameters: list[torch.nn.Parameter]
    total_steps: int

    @property
    def model(self) -> UNet2DConditionModel:
        """The UNet itself, for saving and loading the adapter's weights."""
        return self.accelerator.unwrap_model(self.unet)


def attach_lora(
    components: Components, config: LoraTraining, accelerator: Accelerator, n_rows: int
) -> TrainableLora:
    """A fresh LoRA of the configured rank in the UNet's target modules, trainable in float32."""
    unet = components.unet
    unet.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha or config.rank,
            init_lora_weights="gaussian",
            target_modules=list(config.target_modules),
        )
    )
    if config.mixed_precision != "no":
        cast_training_params(unet, dtype=torch.float32)  # trainable LoRA weights stay fp32
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate)
    micro_per_epoch = math.ceil(n_rows / config.train_batch_size)
    total_steps = config.max_steps or math.ceil(
        config.epochs * micro_per_epoch / config.gradient_accumulation_steps
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
    )
    prepared, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    return TrainableLora(accelerator, prepared, optimizer, lr_scheduler, parameters, total_steps)


def train_steps(
    lora: TrainableLora,
    components: Components,
    inputs: CachedInputs,
    config: LoraTraining,
    start_step: int,
    losses: list[float],
    show_progress: bool,
) -> None:
    """Optimizer steps start_step + 1 .. total, appending each step's loss to `losses`;
    a checkpoint and validation images at their intervals and after the last step."""
    time_ids = torch.tensor(
        [[config.resolution, config.resolution, 0, 0, config.resolution, config.resolution]],
        device=lora.accelerator.device,
        dtype=components.dtype,
    )
    lora.unet.train()
    bar = tqdm(
        total=lora.total_steps,
        initial=start_step,
        unit="step",
        desc="train-lora",
        disable=not show_progress,
    )
    for step in range(start_step, lora.total_steps):
        step_loss = 0.0
        for micro in range(config.gradient_accumulation_steps):
            k = step * config.gradient_accumulation_steps + micro
            loss = _micro_step(lora, components, inputs, config, k, time_ids)
            step_loss += loss / config.gradient_accumulation_steps
        losses.append(round(step_loss, 6))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if done % config.checkpoint_every == 0 or done == lora.total_steps:
            _save_checkpoint(
                lora.model, lora.optimizer, lora.lr_scheduler, losses, config.output_dir, done
            )
        if config.validation and (done % config.validation.every == 0 or done == lora.total_steps):
            _render_validation(
                components.pipeline, lora.model, inputs.validation_embeds, config, done
            )
            lora.unet.train()
    bar.close()


def _micro_step(
    lora: TrainableLora,
    components: Components,
    inputs: CachedInputs,
    config: LoraTraining,
    k: int,
    time_ids: torch.Tensor,
) -> float:
    """Micro-batch k: its rows, noise and timesteps from the seed and k alone (so a resumed
    run draws what an uninterrupted one would), a backward pass, and the optimizer step
    when the accumulation is complete. Returns its loss."""
    device = lora.accelerator.device
    noise_scheduler = components.noise_scheduler
    index = _batch_indices(k, len(inputs.latents), config.train_batch_size, config.seed)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + k)
    batch_latents = inputs.latents[index].to(device)
    if config.random_flip:
        flips = torch.rand(len(index), generator=generator) < 0.5
        batch_latents[flips] = batch_latents[flips].flip(-1)
    noise = torch.randn(batch_latents.shape, generator=generator).to(device)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator
    ).to(device)
    noisy = noise_scheduler.add_noise(batch_latents, noise, timesteps)
    with lora.accelerator.accumulate(lora.unet):
        prediction = lora.unet(
            noisy.to(components.dtype),
            timesteps,
            encoder_hidden_states=inputs.prompt_embeds[index].to(device, components.dtype),
            added_cond_kwargs={
                "text_embeds": inputs.pooled_embeds[index].to(device, components.dtype),
                "time_ids": time_ids.repeat(len(index), 1),
            },
        ).sample
        target = (
            noise
            if noise_scheduler.config.prediction_type == "epsilon"
            else noise_scheduler.get_velocity(batch_latents, noise, timesteps)
        )
        loss = _diffusion_loss(
            prediction.float(), target.float(), timesteps, noise_scheduler, config
        )
        lora.accelerator.backward(loss)
        if lora.accelerator.sync_gradients:
            lora.accelerator.clip_grad_norm_(lora.parameters, config.max_grad_norm)
        lora.optimizer.step()
        lora.lr_scheduler.step()
        lora.optimizer.zero_grad()
    return loss.item()


def _with_trigger(row: TrainingRow, label: str) -> TrainingRow:
    """Captions of the trained class lead with its phrase ("Chest x-ray. Lung opacity.")."""
    trigger = f"Chest x-ray. {LABEL_PHRASES.get(label, label.replace('_', ' ').capitalize())}."
    if row.caption.startswith(trigger):
        return row
    rest = row.caption.removeprefix("Chest x-ray.").strip()
    return TrainingRow(row.path, row.label, f"{trigger} {rest}".strip())


def _batch_indices(k: int, n_rows: int, batch_size: int, seed: int) -> list[int]:
    """Rows of micro-batch k: the next `batch_size` positions of its epoch's permutation."""
    indices = []
    for position in range(k * batch_size, (k + 1) * batch_size):
        epoch, offset = divmod(position, n_rows)
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch))
        indices.append(int(order[offset]))
    return indices


def _as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def _diffusion_loss(prediction, target, timesteps, noise_scheduler, config):
    if config.snr_gamma is None:
        return F.mse_loss(prediction, target)
    # Min-SNR weighting (Hang et al. 2023), as diffusers' training scripts apply it.
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=config.snr_gamma)
    weights = (
        clipped / snr
        if noise_scheduler.config.prediction_type == "epsilon"
        else clipped / (snr + 1)
    )
    per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def _lora_state(unet) -> dict:
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def _save_lora(unet, folder: Path) -> Path:
    with output_errors(folder):
        StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=_lora_state(unet))
    return folder / LORA_WEIGHT_NAME


def _save_checkpoint(unet, optimizer, lr_scheduler, losses, output_dir: Path, step: int) -> None:
    """LoRA weights, optimizer and scheduler state: small, and no pickle (weights_only)."""
    # Built aside, then it replaces an older checkpoint of the same step (a re-run).
    with atomic_folder(output_dir / f"{_CHECKPOINT_PREFIX}{step}") as temporary:
        _save_lora(unet, temporary)
        torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), temporary / "scheduler.pt")
        (temporary / "state.json").write_text(json.dumps({"step": step, "losses": losses}))


def _resume(unet, optimizer, lr_scheduler, output_dir: Path) -> tuple[int, list[float]]:
    """Continue from the newest complete checkpoint, if any."""
    checkpoints = sorted(
        (p for p in output_dir.glob(f"{_CHECKPOINT_PREFIX}*") if (p / "state.json").is_file()),
        key=lambda p: int(p.name.removeprefix(_CHECKPOINT_PREFIX)),
    )
    if not checkpoints:
        return 0, []
    latest = checkpoints[-1]
    state_dict, _ = StableDiffusionXLPipeline.lora_state_dict(str(latest / LORA_WEIGHT_NAME))
    unet_state = {
        k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")
    }
    set_peft_model_state_dict(
        unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default"
    )
    optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
    state = json.loads((latest / "state.json").read_text())
    return int(state["step"]), list(state["losses"])


def _render_validation(pipeline, unet, embeds, config: LoraTraining, step: int) -> None:
    assert config.validation is not None and embeds is not None
    positive, negative, pooled, negative_pooled = embeds
    unet.eval()
    pipeline.unet = unet
    generators = [
        torch.Generator().manual_seed(config.validation.seed + i) for i in range(len(positive))
    ]
    with torch.no_grad():
        images = pipeline(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            num_inference_steps=config.validation.steps,
            guidance_scale=config.validation.guidance_scale,
            height=config.resolution,
            width=config.resolution,
            generator=generators,
        ).images
    folder = config.output_dir / "validation"
    with output_errors(folder):
        folder.mkdir(exist_ok=True)
        make_image_grid(images, rows=1, cols=len(images)).save(folder / f"step-{step:06d}.png")


def _write_training_record(
    config: LoraTraining,
    rows: list[TrainingRow],
    lora: TrainableLora,
    losses: list[float],
    resumed_from: int,
    steps_per_second: float,
) -> None:
    device = lora.accelerator.device
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label] = counts.get(row.label, 0) + 1
    record = {
        "config": config.model_dump(mode="json", by_alias=True),
        "manifest": str(config.manifest),
        "split": TRAIN_SPLIT,
        "rows": len(rows),
        "rows_per_label": counts,
        "rows_sha256": rows_sha256(rows, config.manifest),
        "images": [str(r.path.relative_to(config.manifest.parent)) for r in rows],
        # Contents as well as names: the record still proves which images trained the
        # adapter on a machine where the manifest sits elsewhere (a shipped adapter).
        "image_sha256": [file_sha256(r.path) for r in rows],
        "steps": lora.total_steps,
        "trainable_parameters": sum(p.numel() for p in lora.parameters),
        "resumed_from": resumed_from,
        "loss_curve": losses,
        "steps_per_second": round(steps_per_second, 4),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        if device.type == "cuda"
        else None,
        "versions": library_versions(),
    }
    write_text_atomic(config.output_dir / "training.json", json.dumps(record, indent=2))
