"""The studio's generate side: requests checked and filled from a run's spec, then rendered by
the engine's own `ShardRenderer` (the code every `synth run` worker runs), one job at a time
per device, on one pipeline per device that stays loaded between requests.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from synth.errors import GenerationError, RequestError, SynthError
from synth.plan import PlannedSample
from synth.prompt_weights import weighting_problem
from synth.shards import ImageRecord, encode_image
from synth.spec import FROM_SOURCE, MAX_SEED, Generator

if TYPE_CHECKING:
    import torch

    from synth.generate.render import ShardRenderer
    from synth.studio.catalog import StudioRun

MAX_PROMPT_CHARS = 4000
QC_KEYS = ("qc_label_score", "qc_real_similarity", "qc_nearest_real", "qc_passed", "qc_reason")
MAX_WAITING = 16  # jobs queued beyond the running ones; more are refused with 429
STEPS_RANGE = (1, 100)
GUIDANCE_RANGE = (0.0, 20.0)
LORA_SCALE_RANGE = (0.0, 2.0)
SDXL_NATIVE = 1024  # when the model's own size cannot be read from its folder
_Id = Annotated[str, StringConstraints(max_length=200, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class GenerateRequest(BaseModel):
    """POST /api/generate: every field optional; the run's spec fills what is missing."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    label: str | None = Field(None, alias="class", max_length=200)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=STEPS_RANGE[0], le=STEPS_RANGE[1])
    guidance_scale: float | None = Field(None, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])
    lora_scale: float | None = Field(None, ge=LORA_SCALE_RANGE[0], le=LORA_SCALE_RANGE[1])
    width: int | None = Field(None, ge=8, multiple_of=8)
    height: int | None = Field(None, ge=8, multiple_of=8)
    run: str | None = Field(None, max_length=200)  # whose spec (model, LoRAs); default: first
    sample_id: _Id | None = None  # recorded in the PNG: reproduce a shard row under its id
    attempt: int | None = Field(None, ge=1, le=100)  # likewise, the row's attempt


@dataclass(frozen=True)
class Job:
    """A request resolved against a run's spec: exactly what will be rendered."""

    run: StudioRun
    sample: PlannedSample
    generator: Generator  # the spec's, with the request's steps, guidance and size
    lora_scale: float | None  # None: the class has no LoRA
    attempt: int


def native_size(generator: Generator) -> int:
    """The model's native image side: its UNet's sample size times the VAE's scale, read from
    a local folder's configs; SDXL's 1024 for a hub id."""
    folder = Path(generator.configs)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((Path(generator.vae or folder / "vae") / "config.json").read_text())
        size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        size = SDXL_NATIVE
    return max(size, generator.width, generator.height)


def class_prompts(run: StudioRun, label: str, captions: list[str]) -> list[str]:
    """A class's prompt templates: its spec prompts, or (prompts: from_source) the given
    training captions."""
    prompts = run.spec.classes[label].prompts
    return list(prompts) if isinstance(prompts, list) else captions


def resolve(request: GenerateRequest, run: StudioRun, templates: list[str]) -> Job:
    """Fill a request from the run's spec and check it against the model. Pure, but for a
    blank seed, which is drawn at random (and recorded)."""
    spec = run.spec
    label = request.label if request.label is not None else next(iter(spec.classes))
    if label not in spec.classes:
        raise RequestError("class", f"{label!r} is not a class of run {run.name}: {spec.labels}")
    native = native_size(spec.generator)
    for key in ("width", "height"):
        value = getattr(request, key)
        if value is not None and value > native:
            raise RequestError(key, f"{value} is above the model's native {native}")
    cls = spec.classes[label]
    if request.lora_scale is not None and cls.lora is None:
        raise RequestError("lora_scale", f"class {label} has no LoRA to scale")
    prompt = request.prompt if request.prompt is not None else (templates or [""])[0]
    if not prompt.strip():
        raise RequestError("prompt", f"empty, and class {label} has no prompt template to use")
    negative = (
        request.negative_prompt if request.negative_prompt is not None else cls.negative_prompt
    )
    if cls.prompts != FROM_SOURCE:  # a from_source class's texts are never read as syntax
        for key, text in (("prompt", prompt), ("negative_prompt", negative or "")):
            problem = weighting_problem(text, spec.generator.prompt_weighting)
            if problem:
                raise RequestError(key, problem)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    updates = {
        key: getattr(request, key)
        for key in ("steps", "guidance_scale", "width", "height")
        if getattr(request, key) is not None
    }
    sample = PlannedSample(
        sample_id=request.sample_id or f"studio-{label}-{seed}",
        label=label,
        index=0,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        shard=0,
    )
    lora_scale = None
    if cls.lora is not None:
        lora_scale = request.lora_scale if request.lora_scale is not None else cls.lora.scale
    return Job(
        run=run,
        sample=sample,
        generator=spec.generator.model_copy(update={**updates, "batch_size": 1}),
        lora_scale=lora_scale,
        attempt=request.attempt or 1,
    )


@dataclass(frozen=True)
class Generated:
    png: bytes  # the image, with its provenance as PNG text
    provenance: dict  # the same, as the shard row would hold it
    seconds: float


@dataclass
class _Queued:
    id: str
    job: Job
    future: Future


class GenerationQueue:
    """One worker thread per device, each with one pipeline kept loaded; jobs wait in one
    queue, first come first served, at most MAX_WAITING of them."""

    def __init__(self, devices: list[torch.device] | None = None, max_waiting: int = MAX_WAITING):
        self._devices = devices
        self.max_waiting = max_waiting
        self._waiting: list[_Queued] = []
        self._running: dict[str, _Queued] = {}
        self._condition = threading.Condition()
        self._workers: list[threading.Thread] = []
        self.loaded: dict[str, str] = {}  # device -> the run whose pipeline it holds

    def submit(self, job: Job, job_id: str | None = None) -> tuple[str, Future]:
        with self._condition:
            if job_id is not None and (
                job_id in self._running or any(q.id == job_id for q in self._waiting)
            ):
                raise RequestError("x-synth-job", f"{job_id} is already queued", 409)
            if len(self._waiting) >= self.max_waiting:
                raise RequestError(
                    "queue", f"{len(self._waiting)} jobs are waiting; try again shortly", 429
                )
            queued = _Queued(job_id or uuid.uuid4().hex, job, Future())
            self._waiting.append(queued)
            self._start_workers()
            self._condition.notify()
        return queued.id, queued.future

    def position(self, job_id: str) -> dict:
        """0 while the job runs, n when n-1 jobs are ahead of it; None when unknown (done)."""
        with self._condition:
            position = None
            if job_id in self._running:
                position = 0
            for n, queued in enumerate(self._waiting, start=1):
                if queued.id == job_id:
                    position = n
            return {
                "position": position,
                "running": len(self._running),
                "waiting": len(self._waiting),
                "loaded": dict(self.loaded),
            }

    def _start_workers(self) -> None:
        if self._workers:
            return
        import torch

        devices = self._devices or (
            [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
            or [torch.device("cpu")]
        )
        for device in devices:
            worker = threading.Thread(
                target=self._work, args=(device,), name=f"studio-{device}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def _set_loaded(self, device: torch.device, run: str | None) -> None:
        with self._condition:
            if run is None:
                self.loaded.pop(str(device), None)
            else:
                self.loaded[str(device)] = run

    def _work(self, device: torch.device) -> None:
        key, renderer = None, None
        while True:
            with self._condition:
                while not self._waiting:
                    self._condition.wait()
                queued = self._waiting.pop(0)
                self._running[queued.id] = queued
            try:
                if not queued.future.set_running_or_notify_cancel():
                    continue
                if key != _renderer_key(queued.job.run):  # another model: free the old first
                    key, renderer = None, None
                    self._set_loaded(device, None)
                    _free_memory(device)
                    renderer = _load_renderer(queued.job.run, device)
                    key = _renderer_key(queued.job.run)
                    self._set_loaded(device, queued.job.run.name)
                queued.future.set_result(render(queued.job, renderer))
            except BaseException as err:  # the app stays up: the request gets the error
                if renderer is not None and _is_out_of_memory(err):
                    _free_memory(device)
                queued.future.set_exception(_as_request_error(err, queued.job))
            finally:
                with self._condition:
                    self._running.pop(queued.id, None)


def _renderer_key(run: StudioRun) -> str:
    """What a loaded pipeline depends on: the generator settings a request cannot change, and
    every class's LoRA."""
    spec = run.spec
    fixed = spec.generator.model_dump(
        mode="json", exclude={"steps", "guidance_scale", "width", "height", "batch_size"}
    )
    classes = {label: cls.model_dump(mode="json") for label, cls in spec.classes.items()}
    return json.dumps([fixed, classes, run.spec_sha256], sort_keys=True)


def _load_renderer(run: StudioRun, device: torch.device) -> ShardRenderer:
    from synth.generate.render import RenderSettings, ShardRenderer

    spec = run.spec
    settings = RenderSettings(
        spec.generator, spec.classes, run.spec_sha256 or "studio", created_at="", image_format="png"
    )
    renderer = ShardRenderer(settings, device)
    renderer.generator  # noqa: B018  (load now: a model that cannot load fails this job)
    return renderer


def render(job: Job, renderer: ShardRenderer) -> Generated:
    """Render one job with the engine's worker code, at batch size 1."""
    started = time.perf_counter()
    scales = {job.sample.label: job.lora_scale} if job.lora_scale is not None else {}
    with renderer.generator.adjusted(job.generator, scales):
        row = renderer.render([job.sample]).table.to_pylist()[0]
    image = row.pop("image")
    png = image["bytes"]
    if row["attempt"] == 1 and job.attempt != 1:  # provenance: the seed given is the one rendered
        from PIL import Image

        row["attempt"] = job.attempt
        record = ImageRecord(image_bytes=b"", image_path=image["path"], **row)
        png = encode_image(Image.open(io.BytesIO(png)), "png", record.png_text())
    return Generated(png, row, time.perf_counter() - started)


def with_stored_scores(generated: Generated, stored: bytes) -> Generated:
    """A reproduction of a curated render, with the gate's scores (and reason) its stored file
    records, when its pixels are that file's: then it is that file. Otherwise it stays
    unscored: the studio does not score."""
    from PIL import Image

    theirs = Image.open(io.BytesIO(stored))
    scores = {key: theirs.text[key] for key in QC_KEYS if key in getattr(theirs, "text", {})}
    mine = Image.open(io.BytesIO(generated.png))
    if not scores or mine.tobytes() != theirs.convert(mine.mode).tobytes():
        return generated
    record = ImageRecord(image_bytes=b"", image_path="", **generated.provenance)
    png = encode_image(mine, "png", {**record.png_text(), **scores})
    return Generated(png, {**generated.provenance, **scores}, generated.seconds)


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, GenerationError) and "out of GPU memory" in str(err)
    )


def _free_memory(device: torch.device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _as_request_error(err: BaseException, job: Job) -> BaseException:
    if _is_out_of_memory(err):
        size = f"{job.generator.width}x{job.generator.height}"
        return RequestError(
            "generate",
            f"out of GPU memory rendering {size} with {job.generator.steps} steps; lower "
            "width and height, or free the GPU (another process may hold it), then try again",
            503,
        )
    if isinstance(err, SynthError):
        return RequestError("generate", str(err), 503)
    if isinstance(err, Exception):
        return RequestError("generate", f"generation failed: {type(err).__name__}: {err}", 500)
    return err
