"""The YAML spec: a validated, typed description of one synthetic-data job.

Validation lives here and only here. Every later stage trusts a `Spec`.
Relative paths in a spec resolve against the spec file's folder, so a spec means the same
thing whatever the current directory is; `load_spec` returns a spec with absolute paths.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synth.errors import SpecError
from synth.prompt_weights import weighting_problem
from synth.storage import is_url

# Labels become file names, sample ids and adapter names, so they may never hold a path
# separator or start with a dot: a label like "../../x" is rejected here.
LabelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
SchedulerName = Literal["euler", "euler_ancestral", "dpmpp_2m", "ddim", "unipc"]
# Each scheduler name's diffusers class (by name, so this module stays torch-free).
SCHEDULER_CLASSES: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "unipc": "UniPCMultistepScheduler",
}
DtypeName = Literal["float32", "float16", "bfloat16"]
MAX_SEED = 2**63 - 1
M = TypeVar("M", bound=BaseModel)


# YAML gives paths as strings; every other field takes only its own type ("30" is no integer).
SpecPath = Annotated[Path, Field(strict=False)]


class StrictModel(BaseModel):
    # Each field's docstring is its description in `synth schema`, which editors show.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


class ManifestSource(StrictModel):
    """Real images listed in a CSV or Parquet file with columns path,label[,split]."""

    kind: Literal["manifest"]
    """manifest: a CSV or Parquet file listing the real images."""
    path: SpecPath
    """The manifest file, relative to the spec's folder; image paths in it are relative to it."""
    labels: list[LabelName] = Field(min_length=1)
    """The classes considered, in this order; rows with other labels are ignored and counted."""


class CountsSource(StrictModel):
    """Real class counts given directly: plan and generate without any real images."""

    kind: Literal["counts"]
    """counts: real class counts given directly, with no images."""
    counts: dict[LabelName, Annotated[int, Field(ge=0)]] = Field(min_length=1)
    """Real images per class, for example {opacity: 445, normal: 500}."""
    labels: list[LabelName] | None = None
    """The classes in this order; default: the order of counts."""

    @model_validator(mode="after")
    def _labels_match_counts(self) -> CountsSource:
        if self.labels is not None and sorted(self.labels) != sorted(self.counts):
            raise ValueError(
                f"source.labels {self.labels} must name the same classes as source.counts "
                f"{list(self.counts)}; drop source.labels to use the counts' order"
            )
        return self


class LabelRuleSpec(StrictModel):
    """A task label's rule over MeSH headings; terms match whole words, never substrings."""

    any_of: list[str] = []
    """The label applies when a MeSH heading is one of these."""
    none_of: list[str] = []
    """...and no heading is one of these (confounders)."""
    max_headings: Annotated[int, Field(ge=1)] | None = None
    """...and the study has at most this many headings."""
    exactly: list[str] | None = None
    """The label applies when the headings are exactly these (normal: [normal])."""


class SplitSpec(StrictModel):
    """Patient-level, label-stratified split fractions and their seed."""

    seed: int = 0
    """Seed of the patient-level split."""
    val: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    """Fraction of patients in the validation split."""
    test: Annotated[float, Field(ge=0, le=0.5)] = 0.2
    """Fraction of patients in the test split."""


class IUXraySource(StrictModel):
    """The Indiana University chest X-ray collection, Kaggle or Open-i layout."""

    kind: Literal["iu_xray"]
    """iu_xray: the Indiana University collection (Kaggle or Open-i layout)."""
    path: SpecPath
    """The unpacked download, relative to the spec's folder."""
    labels: list[LabelName] = Field(min_length=1)
    """The classes considered, in this order."""
    rules: dict[LabelName, LabelRuleSpec] = {}
    """Label rules over MeSH headings; defaults exist for normal and opacity."""
    split: SplitSpec = SplitSpec()
    """How patients are split into train, val and test."""
    projections: SpecPath | None = None
    """A CSV of image_id,projection that decides frontal/lateral before any rule."""
    metadata: SpecPath | None = None
    """The NLMCXR DICOM metadata table (Open-i layout); default: the folder's, or
    torchxrayvision's copy."""


PHANTOM_LABELS = ("normal", "opacity")


class PhantomSource(StrictModel):
    """Procedural chest-radiograph phantoms that synth draws itself (rare opacity)."""

    kind: Literal["phantom"]
    """phantom: chest-radiograph phantoms synth draws itself (offline quickstart)."""
    path: SpecPath
    """The folder the phantom is drawn into on first use, then reused while the settings match."""
    count: Annotated[int, Field(ge=20, le=1_000_000)]
    """Images drawn in all."""
    image_size: Annotated[int, Field(ge=32, le=1024, multiple_of=8)] = 64
    """Side of each square image in pixels (a multiple of 8)."""
    opacity_prevalence: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Share of opacity images: exactly round(count x prevalence)."""
    difficulty: Annotated[float, Field(ge=0, le=1)] = 0.5
    """0..1: higher is fainter, smaller densities."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    """Seed of the drawing."""
    split: SplitSpec = SplitSpec()
    """How images are split into train, val and test."""

    @property
    def labels(self) -> list[str]:
        return list(PHANTOM_LABELS)


Source = Annotated[
    Union[ManifestSource, CountsSource, IUXraySource, PhantomSource],  # noqa: UP007
    Field(discriminator="kind"),
]


class Target(StrictModel):
    """Either a label distribution (with a total) or explicit synthetic counts per class."""

    distribution: dict[LabelName, Annotated[float, Field(ge=0, le=1)]] | None = None
    """Wanted share of each class in real + synthetic (sums to 1); give with total."""
    total: Annotated[int, Field(gt=0)] | Literal["auto"] | None = None
    """Images in all after generation; auto: the smallest total that reaches the distribution
    without dropping real images."""
    synthetic: dict[LabelName, Annotated[int, Field(ge=0)]] | None = None
    """Explicit synthetic images per class (instead of distribution)."""

    @model_validator(mode="after")
    def _exactly_one_mode(self) -> Target:
        if (self.distribution is None) == (self.synthetic is None):
            raise ValueError("give exactly one of target.distribution or target.synthetic")
        if self.synthetic is not None and self.total is not None:
            raise ValueError("target.total only applies with target.distribution; remove it")
        if self.distribution is not None:
            proportion_sum = math.fsum(self.distribution.values())
            if abs(proportion_sum - 1.0) > 1e-6:
                raise ValueError(
                    f"target.distribution proportions sum to {proportion_sum:.6g}; "
                    "they must sum to 1"
                )
        if self.synthetic is not None and sum(self.synthetic.values()) == 0:
            raise ValueError("target.synthetic asks for no images at all; give a count above 0")
        return self

    @property
    def resolved_total(self) -> int | Literal["auto"]:
        return "auto" if self.total is None else self.total


class FastPath(StrictModel):
    """How fast the pipeline runs. The defaults are the options whose images stay within float
    tolerance of the plain path (docs/performance.md has the measurements); like batch_size
    they are left out of the run's identity, except vae_decode: tiled, which changes images."""

    attention: Literal["sdpa", "classic"] = "sdpa"
    """sdpa: torch's fused attention; classic: diffusers' math."""
    channels_last: bool = True
    """UNet and VAE convolutions in NHWC memory layout."""
    fuse_qkv: bool = True
    """One QKV matmul per attention; skipped while a class has a LoRA."""
    compile_unet: bool = False
    """torch.compile the UNet: faster steps after minutes of compiling."""
    vae_decode: Literal["batched", "sliced", "tiled"] = "batched"
    """batched: all images at once; sliced: one at a time (less memory, same images); tiled:
    overlapping tiles (least memory; images change slightly)."""


LongPromptPolicy = Literal["error", "truncate", "chunk"]
# Checkpoint files that unpickle when loaded (and so can run code).
PICKLED_CHECKPOINTS = (".ckpt", ".pt", ".pth", ".bin")


class Generator(StrictModel):
    """The diffusers pipeline and how it samples. Every field here but batch_size and fast_path
    changes the images."""

    model: str
    """A hub id, a local diffusers folder, or a single-file checkpoint (`.safetensors` as A1111
    and ComfyUI keep them), relative to the spec's folder."""
    config: str | None = None
    """For a single-file checkpoint only: the diffusers folder or hub id whose component
    configs and tokenizers describe it (for an SDXL 1.0 fine-tune, SDXL base's)."""
    vae: str | None = None
    """An optional VAE override: hub id or local folder."""
    dtype: DtypeName = "float16"
    """float32 | float16 | bfloat16 (float16 falls back to float32 on CPU)."""
    scheduler: SchedulerName = "euler"
    """The sampler."""
    steps: Annotated[int, Field(ge=1, le=1000)] = 30
    """Denoising steps per image."""
    guidance_scale: Annotated[float, Field(ge=0, le=50)] = 7.0
    """Classifier-free guidance scale."""
    height: Annotated[int, Field(ge=8, le=8192, multiple_of=8)] = 1024
    """Image height in pixels, a multiple of 8."""
    width: Annotated[int, Field(ge=8, le=8192, multiple_of=8)] = 1024
    """Image width in pixels, a multiple of 8."""
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 4
    """Images per pipeline call (does not change the images)."""
    fast_path: FastPath = Field(default_factory=FastPath)
    """Speed options (do not change the images, except vae_decode: tiled)."""
    prompt_weighting: Literal["none", "a1111"] = "none"
    """none: prompts are plain text, and one holding weighting syntax (brackets) is refused.
    a1111: listed prompts and negative prompts are parsed as A1111/kohya weighting,
    `(term:1.5)`, `(term)` x1.1, `[term]` /1.1, `\\(` for a literal bracket, and encoded with
    those weights by both SDXL text encoders; from_source captions stay plain text."""
    long_prompts: LongPromptPolicy | None = None
    """A prompt past the 77 tokens CLIP encodes: error refuses it; truncate cuts it after the
    last whole word that fits and records the cut text; chunk encodes it whole in 77-token
    windows. Unset: error for listed prompts, truncate for from_source."""

    @model_validator(mode="after")
    def _single_file_has_configs(self) -> Generator:
        suffix = Path(self.model).suffix.lower()
        if suffix in PICKLED_CHECKPOINTS:
            raise ValueError(
                f"model {self.model}: a pickled checkpoint can run code when loaded, so synth "
                "does not load one; convert it to .safetensors"
            )
        if self.single_file and self.config is None:
            raise ValueError(
                f"model {self.model} is a single-file checkpoint, which holds weights but no "
                "configs; set generator.config to the diffusers folder or hub id it was made "
                "from (SDXL 1.0 fine-tunes: stabilityai/stable-diffusion-xl-base-1.0)"
            )
        if self.config is not None and not self.single_file:
            raise ValueError(
                "config is only for a single-file checkpoint (generator.model ending in "
                ".safetensors); a diffusers folder or hub id has its own configs, remove it"
            )
        return self

    @property
    def single_file(self) -> bool:
        """generator.model is one .safetensors checkpoint, not a diffusers folder or hub id."""
        return self.model.lower().endswith(".safetensors")

    @property
    def configs(self) -> str:
        """Where the model's component configs and tokenizers are: generator.config for a
        single-file checkpoint, else generator.model itself."""
        return self.config if self.single_file and self.config is not None else self.model

    def long_prompt_policy(self, prompts: object) -> LongPromptPolicy:
        """What happens to a long prompt of a class whose `prompts` are these."""
        if self.long_prompts is not None:
            return self.long_prompts
        return "truncate" if prompts == FROM_SOURCE else "error"


class Lora(StrictModel):
    """A LoRA adapter: a .safetensors file, or a folder holding pytorch_lora_weights.safetensors."""

    path: SpecPath
    """A .safetensors file, or a folder holding pytorch_lora_weights.safetensors, relative to
    the spec's folder."""
    scale: Annotated[float, Field(ge=0, le=2)] = 1.0
    """LoRA strength, 0..2 (0 = no effect)."""


FROM_SOURCE = "from_source"


class ClassSpec(StrictModel):
    """One class: what is prompted and which LoRA renders it."""

    prompts: list[Annotated[str, Field(min_length=1)]] | Literal["from_source"] = Field(
        min_length=1
    )
    """Prompts, one chosen per sample from its seed; or from_source: the class's real training
    captions."""
    negative_prompt: str | None = None
    """The negative prompt for every sample of the class. Absent: diffusers' default, no
    negative prompt, which SDXL turns into zero embeddings for the unconditional half (as a
    plain diffusers call that leaves it out). "" encodes the empty string: other images."""
    lora: Lora | None = None
    """The class's LoRA adapter; none: the base model."""


class Compute(StrictModel):
    """Where generation runs: a Ray of the run's own, or a cluster."""

    ray_address: str | None = None
    """null: start a Ray of the run's own; auto or ray://host:10001: join that cluster."""
    num_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """auto: one worker per GPU, or one on a machine without a GPU."""
    gpus_per_worker: Annotated[float, Field(gt=0)] = 1
    """GPUs each generation worker holds (fractions share a GPU)."""
    worker_start_timeout_s: Annotated[float, Field(gt=0)] = 600
    """How long the run waits for a first worker to be placed (a GPU, a CPU to free up, a node
    to join) before it stops with an error instead of hanging."""


class Output(StrictModel):
    """The dataset written: Hugging Face-layout Parquet shards."""

    dir: str | None = None
    """The run folder: a local path (relative to the spec), or a URL that fsspec resolves
    (s3://bucket/run, gs://, abfs://; credentials from the standard environment). Default:
    runs/<name> next to the spec."""
    shard_size: Annotated[int, Field(ge=1)] = 256
    """Rows per Parquet shard."""
    image_format: Literal["png", "webp", "jpeg"] = "png"
    """png | webp (lossless) | jpeg (quality 95)."""
    write: Literal["auto", "worker", "driver"] = "auto"
    """Who writes the shards. worker: each worker writes its own, and the driver sees only
    small records; driver: workers send the images to this process, which writes them (for
    workers that cannot reach the output: no shared storage, no credentials); auto: worker,
    falling back to driver, with a warning, when a worker cannot write."""


class RunLimits(StrictModel):
    """Limits that keep a mistyped spec from starting an absurd run."""

    max_images: Annotated[int, Field(ge=1)] = 10_000_000
    """synth run refuses a plan past this many synthetic images, and validate and plan warn: a
    tiny proportion with total: auto can plan billions."""


class EvalSpec(StrictModel):
    """The evaluation: a CNN trained on real vs real+synthetic mixes, scored on real test data."""

    enabled: bool = False
    """Evaluate after generating (needs a source with real images and splits)."""
    classifier: Literal["resnet18", "resnet50", "densenet121", "efficientnet_b0"] = "resnet18"
    """The CNN trained for every arm."""
    image_size: Annotated[int, Field(ge=16, le=1024)] = 224
    """Side of the square the classifier sees."""
    epochs: Annotated[int, Field(ge=1)] = 20
    """Most training epochs per classifier."""
    batch_size: Annotated[int, Field(ge=1)] = 32
    """Classifier training batch size."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-3
    """Classifier learning rate."""
    patience: Annotated[int, Field(ge=1)] = 5
    """Epochs without a better validation AUC before training stops."""
    class_weighted: bool = True
    """Weight the loss by inverse class frequency."""
    repeats: Annotated[int, Field(ge=1, le=100)] = 3
    """Trainings per arm, with different seeds."""
    gpus_per_task: Annotated[float, Field(gt=0)] = 1
    """GPUs each training holds where Ray has GPUs (fractions share a GPU); on CPUs every
    training gets a share of the cores instead."""
    synthetic_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default=[0.25, 0.5, 1.0], min_length=1
    )
    """Shares of the synthetic images added in the real+synthetic arms."""
    fid: list[Literal["inception", "classifier"]] = ["inception", "classifier"]
    """Feature extractors for FID: inception (needs local weights) and/or classifier."""
    inception_weights: SpecPath | None = None
    """Local FID Inception weights (no hub download)."""
    bootstrap: Annotated[int, Field(ge=50, le=100_000)] = 1000
    """Bootstrap resamples for the confidence intervals."""
    memorization_threshold: Annotated[float, Field(gt=0, le=1)] = 0.95
    """Cosine similarity to a real train image at which a synthetic image counts as memorised."""
    allow_unverified_lora: bool = False
    """Evaluate with a LoRA that has no synth training.json (which would show it never saw the
    test split)."""
    unreadable_images: Literal["skip", "error"] = "skip"
    """An unreadable real image: skip (counted in the report) or error (naming it)."""
    untrained_baseline: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Images rendered by a random-weight copy of generator.model (0 = none), whose FID is the
    yardstick the synthetic FID is judged by."""
    precision: Literal["auto", "float32"] = "auto"
    """auto: bf16 autocast where the device computes bf16 natively; float32: always."""


JUDGE_CLASSIFIER = "classifier"


class QCSpec(StrictModel):
    """Curation: every generated image is scored by a judge trained on the real train split,
    gated on the scores, and regenerated (or flagged) when it fails."""

    enabled: bool = False
    """Score, gate and regenerate (needs a source with real images and splits)."""
    judge: Literal["classifier"] | SpecPath = JUDGE_CLASSIFIER
    """classifier: train a judge on the real train split with the evaluation's recipe; or the
    folder of a judge saved by an earlier run (its qc/ folder), reused as is."""
    min_label_score: Annotated[float, Field(ge=0, le=1)] = 0.5
    """The judge's probability of the image's intended class, at least."""
    max_real_similarity: Annotated[float, Field(gt=0, le=1)] = 0.95
    """Cosine similarity, on centred judge features, to the nearest real train image, at
    most."""
    on_reject: Literal["regenerate", "keep"] = "regenerate"
    """regenerate: render a failed image again with a derived seed; keep: score and flag
    only."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    """Renders per sample, the first included."""
    on_exhausted: Literal["error", "keep_best", "drop"] = "error"
    """When every attempt failed: stop with an error; keep the best-scoring attempt (flagged
    qc_passed false); or drop the sample (counted in run.json and the dataset card)."""


class Spec(StrictModel):
    """A synth spec: the real data, the target label distribution, and how each class is
    generated. `synth run SPEC` plans, generates, writes shards and (with eval) evaluates."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    """The run's name (letters, digits, _ . -)."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    """The master seed; every sample's seed derives from it."""
    source: Source
    """The real data whose label distribution is being fixed."""
    target: Target
    """Exactly one of distribution (+ total) or synthetic."""
    generator: Generator
    """The diffusers pipeline and how it samples."""
    classes: dict[LabelName, ClassSpec] = Field(min_length=1)
    """Per class: prompts, negative prompt and LoRA."""
    compute: Compute = Compute()
    """Where generation runs."""
    output: Output = Output()
    """Where and how the dataset is written."""
    run: RunLimits = RunLimits()
    """The largest plan synth run accepts."""
    eval: EvalSpec = EvalSpec()
    """The evaluation of the synthetic images."""
    qc: QCSpec = QCSpec()
    """Curation of the generated images: judge, gate, regenerate."""

    @model_validator(mode="after")
    def _labels_are_consistent(self) -> Spec:
        labels = self.labels
        if len(set(labels)) != len(labels):
            raise ValueError(f"source.labels has duplicates: {labels}")
        for label in self.classes:
            if label not in labels:
                raise ValueError(f"classes.{label} is not in source.labels {labels}")
        wanted = self.target.distribution or self.target.synthetic or {}
        section = "distribution" if self.target.distribution is not None else "synthetic"
        for label in wanted:
            if label not in labels:
                raise ValueError(f"target.{section}.{label} is not in source.labels {labels}")
            if label not in self.classes:
                raise ValueError(
                    f"target.{section}.{label} has no entry under classes; "
                    f"add classes.{label} with its prompts"
                )
        if isinstance(self.source, CountsSource):
            if self.qc.enabled:
                raise ValueError(
                    "qc.enabled needs real train images to train its judge on, and a counts "
                    "source has none; use a manifest, iu_xray or phantom source, or set "
                    "qc.enabled: false"
                )
            if self.eval.enabled:
                raise ValueError(
                    "eval.enabled needs real images with a train/val/test split, and a counts "
                    "source has none; use a manifest, iu_xray or phantom source, or set "
                    "eval.enabled: false"
                )
            for label, cls in self.classes.items():
                if cls.prompts == FROM_SOURCE:
                    raise ValueError(
                        f"classes.{label}.prompts: from_source needs real captions, and a counts "
                        "source has none; list the prompts, or use an iu_xray/manifest source"
                    )
        weighting = self.generator.prompt_weighting
        for label, cls in self.classes.items():
            texts = [] if cls.prompts == FROM_SOURCE else list(enumerate(cls.prompts))
            named = [(f"classes.{label}.prompts[{i}]", text) for i, text in texts]
            negative = [(f"classes.{label}.negative_prompt", cls.negative_prompt or "")]
            for where, text in [*named, *negative]:
                problem = weighting_problem(text, weighting)
                if problem:
                    preview = text if len(text) <= 60 else f"{text[:57]}..."
                    raise ValueError(f"{where} {preview!r} {problem}")
        if self.target.distribution is not None:
            missing = [label for label in labels if label not in self.target.distribution]
            if missing:
                raise ValueError(
                    f"target.distribution gives no proportion for {missing}; "
                    "give one for every label in source.labels (0 is allowed)"
                )
        return self

    @property
    def labels(self) -> list[str]:
        """The classes considered, in the spec's order."""
        if isinstance(self.source, CountsSource) and self.source.labels is None:
            return list(self.source.counts)
        assert self.source.labels is not None
        return list(self.source.labels)


class ValidationRender(StrictModel):
    """Validation images rendered during LoRA training, as a grid per interval."""

    prompts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    every: Annotated[int, Field(ge=1)] = 500
    steps: Annotated[int, Field(ge=1, le=1000)] = 30
    guidance_scale: Annotated[float, Field(ge=0, le=50)] = 7.0
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 42


class LoraTraining(StrictModel):
    """`synth train-lora CONFIG`: an SDXL LoRA on a prepared manifest's train split.
    Defaults are the SynTheX-Ray thesis's values."""

    model_config = ConfigDict(populate_by_name=True)

    manifest: SpecPath
    model: str
    vae: str | None = None
    mode: Literal["all", "single"] = "single"
    # single: the class trained against normal controls 1:1, its phrase as leading trigger.
    target_class: LabelName | None = Field(default=None, alias="class")
    control: LabelName = "normal"
    output_dir: SpecPath
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 42
    resolution: Annotated[int, Field(ge=8, le=4096, multiple_of=8)] = 1024
    rank: Annotated[int, Field(ge=1, le=256)] = 4
    alpha: Annotated[float, Field(gt=0)] | None = None  # default: the rank
    target_modules: list[str] = Field(default=["to_q", "to_k", "to_v", "to_out.0"], min_length=1)
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-4
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    train_batch_size: Annotated[int, Field(ge=1)] = 1
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 4
    max_steps: Annotated[int, Field(ge=1)] | None = None
    epochs: Annotated[int, Field(ge=1)] | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    gradient_checkpointing: bool = True
    snr_gamma: Annotated[float, Field(gt=0)] | None = None
    random_flip: bool = False  # off: left and right anatomy differ
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    checkpoint_every: Annotated[int, Field(ge=1)] = 500
    validation: ValidationRender | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LoraTraining:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps or epochs")
        if self.mode == "single" and self.target_class is None:
            raise ValueError("mode single needs class: the label trained against the controls")
        if self.mode == "single" and self.target_class == self.control:
            raise ValueError("class and control must differ")
        return self


def load_training_config(path: str | Path) -> LoraTraining:
    """Read and validate a LoRA training config; relative paths resolve against its folder."""
    config_path = Path(path)
    config = validate_yaml(_read_text(config_path), LoraTraining, str(config_path))
    base = config_path.resolve().parent
    return config.model_copy(
        update={
            "manifest": _absolute(config.manifest, base, "manifest"),
            "output_dir": _absolute(config.output_dir, base, "output_dir"),
            "model": _local_or_hub_id(config.model, base, "model"),
            "vae": _local_or_hub_id(config.vae, base, "vae"),
        }
    )


def _local_or_hub_id(ref: str | None, base: Path, key: str) -> str | None:
    """A model reference: an existing folder, or anything written as a path, made absolute
    against `base` (so a mistyped path is reported as a missing folder); else a hub id."""
    if ref is None:
        return None
    candidate = Path(ref).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    return str(_resolved(candidate, key)) if looks_like_a_path(ref) or candidate.exists() else ref


def looks_like_a_path(ref: str) -> bool:
    """A model reference written as a path: a hub id is `name` or `owner/name`, never starting
    with '.', '/' or '~', never holding two slashes or a backslash, never a .safetensors file."""
    return (
        ref.startswith((".", "/", "~"))
        or ref.count("/") > 1
        or "\\" in ref
        or ref.lower().endswith(".safetensors")
    )


def _absolute(path: Path, base: Path, key: str) -> Path:
    path = path.expanduser()
    return _resolved(path if path.is_absolute() else base / path, key)


def _resolved(path: Path, key: str) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError) as err:  # Python raises RuntimeError on a symlink loop
        raise SpecError(
            f"{key} {path}: cannot be resolved ({err}); point it at a real file or folder"
        ) from None


def sha256_of_json(data: Any) -> str:
    """A stable digest of JSON-serialisable data (sorted keys, no whitespace)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_spec(path: str | Path) -> Spec:
    """Read, validate and path-resolve a spec file. Raises SpecError with file, line and key."""
    spec_path = Path(path)
    spec = parse_spec(_read_text(spec_path), source_name=str(spec_path))
    return resolve_paths(spec, spec_path.resolve().parent)


def parse_spec(text: str, source_name: str = "<spec>") -> Spec:
    """Validate spec YAML text. Paths are left as written."""
    return validate_yaml(text, Spec, source_name)


# YAML aliases can make a small file expand to an enormous value (an "alias bomb"); no spec
# needs more than this many values once every alias is expanded.
MAX_YAML_VALUES = 100_000
MAX_QUOTED_CHARS = 200  # the longest piece of the user's input an error message repeats


class _SpecLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (YAML keeps the last one silently) and refuses
    documents whose aliases expand past MAX_YAML_VALUES values."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` merges a mapping; its keys may be overridden
            key = self.construct_object(key_node, deep=deep)
            mark = key_node.start_mark
            where = f"{mark.line + 1}:{mark.column + 1}"
            if isinstance(key, typing.Hashable) and key in seen:
                raise SpecError(
                    f"{self.name}:{where}: duplicate key '{_quoted(key)}' (first at "
                    f"{seen[key]}); YAML would keep only the last one, so remove one of them"
                )
            seen.setdefault(key, where)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values the node stands for once every alias is expanded (aliases share node
    objects, so each node is sized once)."""
    if id(node) not in memo:
        memo[id(node)] = 0  # a cycle counts once
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(node)]


def _load_yaml(text: str, source_name: str) -> Any:
    loader = _SpecLoader(text)
    loader.name = source_name
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_VALUES:
            raise SpecError(
                f"{source_name}: its YAML aliases expand to {size:,} values, more than the "
                f"{MAX_YAML_VALUES:,} any spec needs; write the values out instead of nesting "
                "aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _quoted(value: Any) -> str:
    """The user's input as an error message repeats it: at most MAX_QUOTED_CHARS of it."""
    text = repr(value) if not isinstance(value, str) else value
    if len(text) <= MAX_QUOTED_CHARS:
        return text
    return f"{text[:MAX_QUOTED_CHARS]}... ({len(text):,} characters)"


def validate_yaml(text: str, model: type[M], source_name: str) -> M:
    """safe_load YAML text and validate it as `model`, with messages naming file, line, key."""
    try:
        data = _load_yaml(text, source_name)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{source_name}:{mark.line + 1}:{mark.column + 1}" if mark else source_name
        raise SpecError(f"{where}: malformed YAML: {err.problem}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{source_name}: malformed YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source_name}: expected a YAML mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(_describe_validation_error(err, text, source_name, model)) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read ({err})") from None


def resolve_paths(spec: Spec, base: Path) -> Spec:
    """Make the spec's local paths absolute against `base`; hub ids are left as they are."""

    def absolute(path: Path, key: str) -> Path:
        return _absolute(path, base, key)

    source = spec.source
    if isinstance(source, ManifestSource | IUXraySource | PhantomSource):
        source = source.model_copy(update={"path": absolute(source.path, "source.path")})
    if isinstance(source, IUXraySource):
        source = source.model_copy(
            update={
                key: absolute(getattr(source, key), f"source.{key}")
                for key in ("projections", "metadata")
                if getattr(source, key) is not None
            }
        )
    generator = spec.generator.model_copy(
        update={
            "model": _local_or_hub_id(spec.generator.model, base, "generator.model"),
            "config": _local_or_hub_id(spec.generator.config, base, "generator.config"),
            "vae": _local_or_hub_id(spec.generator.vae, base, "generator.vae"),
        }
    )
    classes = {
        label: cls.model_copy(
            update={
                "lora": cls.lora.model_copy(
                    update={"path": absolute(cls.lora.path, f"classes.{label}.lora.path")}
                )
            }
        )
        if cls.lora
        else cls
        for label, cls in spec.classes.items()
    }
    out_dir = spec.output.dir
    if out_dir is None or not is_url(out_dir):  # a local folder (file:// URLs included)
        local = Path(out_dir.removeprefix("file://")) if out_dir else Path("runs") / spec.name
        out_dir = str(absolute(local, "output.dir"))
    output = spec.output.model_copy(update={"dir": out_dir})
    weights = spec.eval.inception_weights
    evaluation = spec.eval.model_copy(
        update={
            "inception_weights": absolute(weights, "eval.inception_weights") if weights else None
        }
    )
    judge = spec.qc.judge
    qc = spec.qc.model_copy(
        update={"judge": judge if judge == JUDGE_CLASSIFIER else absolute(judge, "qc.judge")}
    )
    return spec.model_copy(
        update={
            "source": source,
            "generator": generator,
            "classes": classes,
            "output": output,
            "eval": evaluation,
            "qc": qc,
        }
    )


def spec_to_yaml(spec: Spec) -> str:
    """The spec as YAML, in the same shape it was written in."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of the spec, for editors."""
    return Spec.model_json_schema()


# --- error messages -------------------------------------------------------------------------


def _describe_validation_error(
    err: ValidationError, text: str, source_name: str, model: type[BaseModel]
) -> str:
    problems: dict[str, list[str]] = {}  # "file:line: key.path" -> messages
    for item in err.errors():
        loc = tuple(item["loc"])
        yaml_path = _yaml_path(loc, model)
        key_path = ".".join(str(part) for part in yaml_path) or "(top level)"
        line = _line_of(text, yaml_path)
        where = f"{source_name}:{line}" if line else source_name
        if item["type"] == "extra_forbidden":
            message = f"unknown key '{loc[-1]}'"
            known = _known_keys(loc[:-1], model)
            suggestion = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if suggestion:
                message += f" (did you mean '{suggestion[0]}'?)"
            else:
                message += f"; allowed here: {', '.join(known)}"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "value_error":
            message = str(item["ctx"]["error"]) if "ctx" in item else item["msg"]
            key_path = key_path if yaml_path else "spec"
        else:
            message = f"{item['msg']} (got {_quoted(repr(item.get('input')))})"
        problems.setdefault(f"{where}: {key_path}", []).append(message)
    # A value that fits no member of a union ("a list of prompts or from_source") gives one
    # message per member; they read best joined.
    lines = [f"{place}: {' or '.join(messages)}" for place, messages in problems.items()]
    if len(lines) == 1:
        return lines[0]
    return f"{lines[0]} (and {len(lines) - 1} more: {'; '.join(lines[1:])})"


def _yaml_path(loc: tuple[Any, ...], model: type[BaseModel]) -> tuple[Any, ...]:
    """Drop pydantic's union tags (e.g. 'manifest' in source.manifest.path) from a location."""
    path: list[Any] = []
    node: Any = model
    for part in loc:
        if isinstance(part, str) and ("[" in part or part.startswith("constrained-")):
            continue  # pydantic's union member names: "list[constrained-str]", "constrained-int"
        child = _child_type(node, part)
        if child is _UNION_TAG:
            node = _union_member(node, part)
            continue
        path.append(part)
        node = child
    return tuple(path)


_UNION_TAG = object()


def _strip(annotation: Any) -> list[Any]:
    """Unwrap Annotated/Optional/Union into the list of concrete member types."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _strip(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members: list[Any] = []
        for arg in typing.get_args(annotation):
            members.extend(_strip(arg))
        return [m for m in members if m is not type(None)]
    return [annotation]


def _child_type(node: Any, part: Any) -> Any:
    members = _strip(node)
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(models) > 1 and any(_kind_of(m) == part for m in models):
        return _UNION_TAG
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name, info in member.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
        elif typing.get_origin(member) is dict:
            return typing.get_args(member)[1]
        elif typing.get_origin(member) is list:
            return typing.get_args(member)[0]
    return None


def _kind_of(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("kind")
    return typing.get_args(field.annotation)[0] if field else None


def _union_member(node: Any, tag: Any) -> Any:
    return next(m for m in _strip(node) if isinstance(m, type) and _kind_of(m) == tag)


def _known_keys(loc: tuple[Any, ...], model: type[BaseModel]) -> list[str]:
    node: Any = model
    for part in loc:
        child = _child_type(node, part)
        node = _union_member(node, part) if child is _UNION_TAG else child
    return [
        info.alias or name
        for member in _strip(node)
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name, info in member.model_fields.items()
    ]


def _line_of(text: str, yaml_path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest key of `yaml_path` that exists in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in yaml_path:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
            key = next((k for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = key.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
