"""The generator backend: one diffusers SDXL pipeline with every class's LoRA loaded once.

It only orchestrates diffusers parts: the pipeline, a scheduler chosen by name, and LoRA
adapters switched per class with `set_adapters`. It knows nothing of Ray or Parquet.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

from synth.curate.gate import Gate, QCScore, margin
from synth.errors import GenerationError, ModelError
from synth.generate.long_prompts import LongPromptEncoder
from synth.plan import PlannedSample, retry_seed
from synth.preflight import (
    check_checkpoint_file,
    check_model_reference,
    file_sha256,
    resolve_lora_file,
)
from synth.prompt_tokens import fit_prompt, fits
from synth.prompt_weights import Fragments, fragments, plain
from synth.spec import FROM_SOURCE, SCHEDULER_CLASSES, ClassSpec, FastPath, Generator

logger = logging.getLogger(__name__)

SCHEDULERS = {name: getattr(diffusers, cls) for name, cls in SCHEDULER_CLASSES.items()}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A bad image (NaN or all black) is retried with a derived seed at most this many times in all.
MAX_ATTEMPTS = 3
# An image whose brightest pixel is below one 8-bit level is black once quantised.
_BLACK_LEVEL = 1 / 255


@dataclass(frozen=True)
class Adapter:
    """A class's LoRA as loaded: the resolved file, its digest and scale."""

    path: Path
    sha256: str
    scale: float


@dataclass(frozen=True)
class RenderedImage:
    sample: PlannedSample
    image: Image.Image
    seed: int  # the seed that made this image (the planned one unless a retry was needed)
    attempt: int  # 1 for the first try
    qc: QCScore | None = None  # the curation gate's scores, when qc is on


@dataclass(frozen=True)
class RenderedBatch:
    """A batch's outcome: the images kept (in sample order), the renders the curation gate
    rejected (kept for audit), and the samples dropped once every attempt failed."""

    kept: list[RenderedImage]
    rejected: list[RenderedImage] = field(default_factory=list)
    dropped: list[PlannedSample] = field(default_factory=list)


def pick_device() -> torch.device:
    """The first visible GPU if any (Ray narrows CUDA_VISIBLE_DEVICES to the actor's), else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def is_bad_image(pixels: np.ndarray) -> bool:
    """NaN/inf anywhere, or every pixel black: the signs of a diverged or broken sample."""
    return not np.isfinite(pixels).all() or float(pixels.max()) < _BLACK_LEVEL


class SampleGenerator:
    """Loads the pipeline and every class's LoRA once; renders samples class by class."""

    def __init__(
        self,
        generator: Generator,
        classes: dict[str, ClassSpec],
        device: torch.device | None = None,
        image_check: Callable[[np.ndarray], bool] = is_bad_image,
        gate: Gate | None = None,
    ) -> None:
        self.settings = generator
        self.classes = classes
        self.device = device or pick_device()
        self.dtype = DTYPES[generator.dtype]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            # Many CPU kernels have no float16 version; float32 is the honest CPU choice.
            warnings.warn(
                "generator.dtype float16 is not supported on CPU; using float32", stacklevel=2
            )
            self.dtype = torch.float32
        self.image_check = image_check
        self.gate = gate
        quiet_libraries()
        self.pipeline = _load_pipeline(generator, self.dtype).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.adapters = {
            label: self._load_adapter(label, cls.lora.path, cls.lora.scale)
            for label, cls in classes.items()
            if cls.lora is not None
        }
        self.fast_path = apply_fast_path(self.pipeline, generator.fast_path, bool(self.adapters))
        self._active_label: str | None = None
        # Checked at every worker's start too: a hub model's prompts cannot be checked earlier.
        self.tokenizers = [
            t for t in (self.pipeline.tokenizer, self.pipeline.tokenizer_2) if t is not None
        ]
        self._recorded_prompts: dict[tuple[str, str], str] = {}
        self._long_prompts: LongPromptEncoder | None = None  # built when a prompt needs it

    @property
    def device_name(self) -> str:
        """The hardware and precision, without the device index, so rows compare across GPUs."""
        dtype = str(self.dtype).removeprefix("torch.")
        if self.device.type == "cuda":
            return f"{torch.cuda.get_device_name(self.device)} (cuda, {dtype})"
        return f"cpu ({dtype})"

    def render(
        self,
        samples: Sequence[PlannedSample],
        on_batch_done: Callable[[int], None] | None = None,
    ) -> list[RenderedImage]:
        """Render samples in order, in batches of `batch_size` that never mix classes; the
        images kept."""
        rendered: list[RenderedImage] = []
        for batch in self.render_batches(samples):
            rendered.extend(batch.kept)
            if on_batch_done:
                on_batch_done(len(batch.kept) + len(batch.dropped))
        return rendered

    def render_batches(self, samples: Sequence[PlannedSample]) -> Iterator[RenderedBatch]:
        """`render`, one finished batch at a time, so a caller can encode a batch while the
        next one renders."""
        for label, class_samples in groupby(samples, key=lambda s: s.label):
            self._activate(label)
            class_samples = list(class_samples)
            for start in range(0, len(class_samples), self.settings.batch_size):
                yield self._render_batch(class_samples[start : start + self.settings.batch_size])

    def recorded(self, sample: PlannedSample) -> PlannedSample:
        """The sample with the prompts that are rendered and recorded: a prompt past what CLIP
        encodes is refused, cut after its last whole word that fits, or kept whole (chunk), by
        the class's long-prompt policy."""
        policy = self._policy(sample.label)
        return replace(
            sample,
            prompt=self._fit(sample.prompt, policy, f"classes.{sample.label} prompt"),
            negative_prompt=None
            if sample.negative_prompt is None
            else self._fit(
                sample.negative_prompt, policy, f"classes.{sample.label}.negative_prompt"
            ),
        )

    @contextmanager
    def adjusted(self, settings: Generator, lora_scales: dict[str, float]) -> Iterator[None]:
        """Render with other per-image settings (steps, guidance scale, size, batch size) and
        LoRA scales, then restore the spec's: what the studio changes per request. The loaded
        weights, dtype and scheduler stay, so only those settings may differ."""
        fixed = ("model", "vae", "dtype", "scheduler", "fast_path", "long_prompts")
        changed = [key for key in fixed if getattr(settings, key) != getattr(self.settings, key)]
        if changed:
            raise ValueError(f"cannot change {changed} without reloading the pipeline")
        saved = (self.settings, self.adapters)
        self.settings = settings
        self.adapters = {
            label: replace(adapter, scale=lora_scales.get(label, adapter.scale))
            for label, adapter in self.adapters.items()
        }
        self._active_label = None  # set_adapters again, with the new scale
        try:
            yield
        finally:
            self.settings, self.adapters = saved
            self._active_label = None

    def _policy(self, label: str) -> str:
        cls = self.classes.get(label)
        return self.settings.long_prompt_policy(cls.prompts if cls else [])

    def _weighted(self, label: str) -> bool:
        """Whether the class's texts are read as A1111 weighting: listed prompts (and the
        negative prompt) under prompt_weighting a1111; from_source captions never are."""
        cls = self.classes.get(label)
        listed = cls is not None and cls.prompts != FROM_SOURCE
        return self.settings.prompt_weighting == "a1111" and listed

    def _texts(self, sample: PlannedSample) -> tuple[Fragments, Fragments | None]:
        """The sample's prompt and negative prompt as weighted fragments (None: no negative
        prompt)."""
        read = fragments if self._weighted(sample.label) else plain
        negative = sample.negative_prompt
        return read(sample.prompt), None if negative is None else read(negative)

    def _encoding(self, sample: PlannedSample) -> int:
        """0 when plain diffusers encodes the sample's prompts (unweighted, within one
        window); else how many 77-token windows compel's encoding takes (weighted prompts,
        or long ones under long_prompts: chunk; the other policies cut or refuse)."""
        texts = [t for t in (sample.prompt, sample.negative_prompt) if t is not None]
        weighted = self._weighted(sample.label)
        if not weighted and (self._policy(sample.label) != "chunk" or not self.tokenizers):
            return 0
        if not weighted and all(fits(t, self.tokenizers) for t in texts):
            return 0
        if self._long_prompts is None:
            self._long_prompts = LongPromptEncoder(self.pipeline)
        return self._long_prompts.windows(*self._texts(sample))

    def _fit(self, text: str, policy: str, where: str) -> str:
        if (text, policy) not in self._recorded_prompts:
            self._recorded_prompts[(text, policy)] = fit_prompt(
                text, self.tokenizers, policy, where
            )
        return self._recorded_prompts[(text, policy)]

    def _render_batch(self, batch: list[PlannedSample]) -> RenderedBatch:
        """Render, check and (with a gate) score each sample, re-rendering with a derived seed
        what came out NaN or black (at most MAX_ATTEMPTS such renders a sample) or failed the
        gate (at most qc.max_attempts scored renders a sample)."""
        batch = [self.recorded(sample) for sample in batch]  # rendered as recorded
        qc = self.gate.qc if self.gate else None
        bad: dict[str, int] = {}  # NaN or black renders per sample
        scored: dict[str, int] = {}  # renders the gate scored per sample
        kept: dict[str, RenderedImage] = {}
        best: dict[str, RenderedImage] = {}  # each sample's best-scoring rejected render
        rejected: list[RenderedImage] = []
        exhausted: list[PlannedSample] = []
        pending, attempt = list(batch), 0
        while pending:
            attempt += 1
            seeds = [retry_seed(sample.seed, attempt) for sample in pending]
            pixels = self._call_pipeline(pending, seeds)
            healthy, retry = [], []
            for sample, image_pixels, seed in zip(pending, pixels, seeds, strict=True):
                if not self.image_check(image_pixels):
                    image = VaeImageProcessor.numpy_to_pil(image_pixels[None])[0]
                    healthy.append(RenderedImage(sample, image, seed, attempt))
                    continue
                bad[sample.sample_id] = bad.get(sample.sample_id, 0) + 1
                if bad[sample.sample_id] >= MAX_ATTEMPTS:
                    raise GenerationError(
                        f"sample {sample.sample_id}: image still NaN or black after "
                        f"{MAX_ATTEMPTS} attempts; use generator.dtype float32 or bfloat16, or "
                        "the fp16-fix VAE"
                    )
                retry.append(sample)
            if retry:
                logger.warning(
                    "%d image(s) came out NaN or black on attempt %d; retrying with derived seeds",
                    len(retry),
                    attempt,
                )
            for item in self._scored(healthy):
                sample_id = item.sample.sample_id
                if item.qc is None or item.qc.passed or qc.on_reject == "keep":
                    kept[sample_id] = item
                    continue
                rejected.append(item)
                if sample_id not in best or margin(item.qc, qc) > margin(best[sample_id].qc, qc):
                    best[sample_id] = item
                scored[sample_id] = scored.get(sample_id, 0) + 1
                (retry if scored[sample_id] < qc.max_attempts else exhausted).append(item.sample)
            pending = sorted(retry, key=batch.index)
        dropped = []
        for sample in sorted(exhausted, key=batch.index):
            choice = best[sample.sample_id]
            if qc.on_exhausted == "error":
                raise GenerationError(
                    f"sample {sample.sample_id}: all {qc.max_attempts} renders failed the qc gate "
                    f"(the best: {choice.qc.reason}); loosen qc.min_label_score or "
                    "qc.max_real_similarity, raise qc.max_attempts, or set qc.on_exhausted: "
                    "keep_best or drop"
                )
            if qc.on_exhausted == "keep_best":
                kept[sample.sample_id] = choice  # flagged: qc_passed is false
                rejected = [r for r in rejected if r is not choice]
            else:
                dropped.append(sample)
        return RenderedBatch(
            kept=[kept[s.sample_id] for s in batch if s.sample_id in kept],
            rejected=rejected,
            dropped=dropped,
        )

    def _scored(self, images: list[RenderedImage]) -> list[RenderedImage]:
        if self.gate is None:
            return images
        scores = self.gate.score([i.image for i in images], [i.sample.label for i in images])
        return [replace(item, qc=score) for item, score in zip(images, scores, strict=True)]

    def _call_pipeline(self, samples: list[PlannedSample], seeds: list[int]) -> np.ndarray:
        """One pipeline call per kind of encoding (one call unless weighted or chunked prompts
        are in the batch), so the conditioning of a sample never depends on its batch
        neighbours."""
        # A class's samples share one negative prompt, or none: a batch never mixes the two.
        encodings = [(self._encoding(sample), sample.negative_prompt is None) for sample in samples]
        pixels: list[np.ndarray | None] = [None] * len(samples)
        for encoding in sorted(set(encodings)):
            where = [i for i, e in enumerate(encodings) if e == encoding]
            group = [samples[i] for i in where]
            if encoding[0] == 0:
                # None: diffusers' default, zero embeddings (force_zeros_for_empty_prompt)
                negatives = None if encoding[1] else [s.negative_prompt for s in group]
                text = {"prompt": [s.prompt for s in group], "negative_prompt": negatives}
            else:
                texts = [self._texts(s) for s in group]
                text = self._long_prompts.conditioning([p for p, _ in texts], [n for _, n in texts])
            for i, image in zip(where, self._denoise(text, [seeds[i] for i in where]), strict=True):
                pixels[i] = image
        return np.stack(pixels)

    def _denoise(self, text: dict, seeds: list[int]) -> np.ndarray:
        # One torch.Generator per sample: each sample's noise depends on its seed alone.
        generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
        with torch.inference_mode(), _out_of_memory_advice(self.settings):
            output = self.pipeline(
                **text,
                generator=generators,
                num_inference_steps=self.settings.steps,
                guidance_scale=self.settings.guidance_scale,
                height=self.settings.height,
                width=self.settings.width,
                output_type="np",
            )
        return output.images

    def _activate(self, label: str) -> None:
        if label == self._active_label or not self.adapters:
            return
        if label in self.adapters:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters([label], adapter_weights=[self.adapters[label].scale])
        else:
            self.pipeline.disable_lora()
        self._active_label = label

    def _load_adapter(self, label: str, path: Path, scale: float) -> Adapter:
        lora_file = resolve_lora_file(path)
        try:
            with warnings.catch_warnings():
                # One adapter per class is the design; peft warns at each one after the first.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.pipeline.load_lora_weights(str(lora_file), adapter_name=label)
        except (ValueError, RuntimeError, KeyError, OSError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
            raise ModelError(
                f"LoRA {lora_file} (class {label}): does not fit model "
                f"{self.settings.model} ({first_line}); use a LoRA trained for this model"
            ) from None
        loaded_into = [
            c for c, names in self.pipeline.get_list_adapters().items() if label in names
        ]
        if not loaded_into:
            # The thesis's code only warned here and went on with the base model; we stop.
            raise ModelError(
                f"LoRA {lora_file} (class {label}): no weights matched model "
                f"{self.settings.model}; use a LoRA trained for this model"
            )
        return Adapter(path=lora_file, sha256=file_sha256(lora_file), scale=scale)


def apply_fast_path(
    pipeline: StableDiffusionXLPipeline, options: FastPath, lora_loaded: bool
) -> tuple[str, ...]:
    """Switch on the fast-path options with diffusers' and torch's own switches; returns the
    ones applied (recorded with the run's timings)."""
    applied = [f"attention={options.attention}"]
    processor = AttnProcessor2_0 if options.attention == "sdpa" else AttnProcessor
    for model in (pipeline.unet, pipeline.vae):
        model.set_attn_processor(processor())
    if options.channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    # The fused projections copy the base to_q/to_k/to_v weights and bypass LoRA layers on
    # them, so a LoRA would silently stop acting; and the fused processor is SDPA-only.
    if options.fuse_qkv and not lora_loaded and options.attention == "sdpa":
        pipeline.fuse_qkv_projections()
        applied.append("fuse_qkv")
    if options.vae_decode == "sliced":
        pipeline.vae.enable_slicing()
    elif options.vae_decode == "tiled":
        pipeline.vae.enable_tiling()
    applied.append(f"vae_decode={options.vae_decode}")
    if options.compile_unet:
        pipeline.unet.compile()  # in place: the pipeline still sees a UNet2DConditionModel
        applied.append("compile_unet")
    return tuple(applied)


@contextmanager
def _out_of_memory_advice(settings: Generator):
    try:
        yield
    except torch.OutOfMemoryError:
        raise GenerationError(
            f"out of GPU memory rendering {settings.batch_size} image(s) of "
            f"{settings.width}x{settings.height}; lower generator.batch_size, or set "
            "generator.fast_path.vae_decode to sliced (same images) or tiled"
        ) from None


def quiet_libraries() -> None:
    """Loading bars and LoRA-prefix notices from diffusers/transformers drown our own progress;
    real failures still raise."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load_pipeline(generator: Generator, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    extra = {}
    if generator.vae:
        extra["vae"] = load_pretrained(AutoencoderKL, generator.vae, dtype, "generator.vae")
    if generator.single_file:
        pipeline = load_single_file(generator, dtype, **extra)
    else:
        pipeline = load_pretrained(
            StableDiffusionXLPipeline, generator.model, dtype, "generator.model", **extra
        )
    scheduler_class = SCHEDULERS[generator.scheduler]
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)
    return pipeline


def load_single_file(generator: Generator, dtype: torch.dtype, **kwargs):
    """An SDXL pipeline from one original-layout checkpoint, its component configs and
    tokenizers from generator.config (a local folder: nothing is fetched)."""
    check_checkpoint_file(Path(generator.model))
    check_model_reference(generator.configs, "generator.config")
    try:
        return StableDiffusionXLPipeline.from_single_file(
            generator.model,
            config=generator.configs,
            dtype=dtype,
            local_files_only=Path(generator.configs).is_dir(),
            **kwargs,
        )
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"generator.model {generator.model}: cannot load it with the configs of "
            f"generator.config {generator.configs} ({reason}); give the diffusers folder or "
            "hub id of the model this checkpoint was made from"
        ) from None


def load_pretrained(cls, ref: str, dtype: torch.dtype, key: str, **kwargs):
    """`cls.from_pretrained` with errors that say which spec key to fix."""
    check_model_reference(ref, key)
    try:
        return cls.from_pretrained(ref, dtype=dtype, use_safetensors=True, **kwargs)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{key} {ref}: cannot load ({reason}); give a local diffusers folder, or a hub id "
            "on a machine that can reach the hub"
        ) from None
