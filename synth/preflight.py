"""What a spec's files are, checked without loading a model or importing torch, so that
`synth validate` can check everything `synth run` would refuse: the model and VAE references,
each LoRA file, and the output folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors import SafetensorError, safe_open

from synth.errors import ModelError, OutputError
from synth.layout import JUDGE_FILES, is_run_entry
from synth.plan import Plan
from synth.prompt_tokens import fit_prompt, load_tokenizers
from synth.spec import JUDGE_CLASSIFIER, Spec, looks_like_a_path
from synth.storage import Location, location

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def resolve_lora_file(path: Path) -> Path:
    """The safetensors file of a LoRA given as a file or as a folder that holds one."""
    candidate = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise ModelError(
            f"LoRA {path}: not found; train it with `synth train-lora CONFIG` (see the README), "
            f"or point lora.path at a .safetensors file or a folder holding {LORA_WEIGHT_NAME}"
        )
    try:
        with safe_open(str(candidate), framework="numpy") as handle:  # lists keys only
            keys = list(handle.keys())
        if not keys:
            raise ModelError(f"LoRA {candidate}: holds no tensors; re-export the adapter")
        if not any("lora" in key.lower() for key in keys):
            raise ModelError(
                f"LoRA {candidate}: not a LoRA (none of its {len(keys)} tensors has a LoRA name "
                f"such as lora_A, lora_down or lora.up; the first is {keys[0]!r}, so it looks "
                "like a model's weights); give a LoRA file in the diffusers, PEFT or kohya/A1111 "
                "layout"
            )
    except (SafetensorError, OSError) as err:
        raise ModelError(
            f"LoRA {candidate}: not a readable safetensors file ({err}); "
            "re-save it with save_lora_weights"
        ) from None
    return candidate


# Key prefixes of an SDXL checkpoint in the original (SGM/LDM) single-file layout.
CHECKPOINT_PARTS = {
    "model.diffusion_model.": "the UNet",
    "first_stage_model.": "the VAE",
    "conditioner.embedders.0.transformer.": "the CLIP ViT-L text encoder",
    "conditioner.embedders.1.model.": "the OpenCLIP ViT-bigG text encoder",
}


def check_checkpoint_file(path: Path, key: str = "generator.model") -> None:
    """A single-file SDXL checkpoint: a readable .safetensors file holding the original
    layout's UNet, VAE and both text encoders (its header is read, not its weights)."""
    if not path.is_file():
        raise ModelError(f"{key} {path}: file not found; point {key} at an SDXL .safetensors "
                         "checkpoint or a diffusers folder")  # fmt: skip
    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{key} {path}: not a readable safetensors file ({err})") from None
    missing = [what for prefix, what in CHECKPOINT_PARTS.items()
               if not any(k.startswith(prefix) for k in keys)]  # fmt: skip
    if missing:
        first = repr(keys[0]) if keys else "none"
        raise ModelError(
            f"{key} {path}: not a single-file SDXL checkpoint (it lacks {', '.join(missing)}; "
            f"its first tensor is {first}); give a whole SDXL checkpoint in the A1111/ComfyUI "
            "layout, or a diffusers folder"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_model_reference(ref: str, key: str = "generator.model") -> None:
    """Cheap checks of a model reference before any worker starts: a local folder must be a
    diffusers folder; a hub id must be well formed and, when offline mode (HF_HUB_OFFLINE) is
    set, already in the hub cache."""
    local = Path(ref)
    if looks_like_a_path(ref) or local.exists():
        if not local.exists():
            raise ModelError(f"{key} {ref}: folder not found; point {key} at a diffusers folder")
        if local.is_file() and local.suffix.lower() == ".safetensors":
            raise ModelError(
                f"{key} {ref}: a single-file checkpoint, which {key} does not take; give a "
                "diffusers folder (StableDiffusionXLPipeline.from_single_file(FILE, "
                "config=FOLDER).save_pretrained(OUT) writes one)"
            )
        if not local.is_dir() or not (
            (local / "model_index.json").is_file() or (local / "config.json").is_file()
        ):
            raise ModelError(
                f"{key} {ref}: not a diffusers folder (no model_index.json); "
                "save the model with save_pretrained"
            )
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise ModelError(
            f"{key} {ref}: neither a local folder nor a hub id (owner/name); fix the path"
        ) from None
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "model_index.json") or try_to_load_from_cache(
            ref, "config.json"
        )
        if not isinstance(cached, str):
            raise ModelError(
                f"{key} {ref}: cannot load (HF_HUB_OFFLINE is set and the hub cache lacks it); "
                "give a local diffusers folder, or fetch it once where the hub is reachable"
            )


def check_spec_files(spec: Spec, plan: Plan) -> None:
    """Everything `synth run` would refuse about the spec's files, checked before anything
    loads: the model and VAE references, every LoRA file, the output folder and, when the
    model is a local folder, each planned prompt against its tokenizers."""
    generator = spec.generator
    if generator.single_file:
        check_checkpoint_file(Path(generator.model))
        check_model_reference(generator.configs, "generator.config")
    else:
        check_model_reference(generator.model)
    configs = Path(generator.configs)
    if configs.is_dir():
        check_prompts(spec, plan, configs)
    if spec.generator.vae:
        check_model_reference(spec.generator.vae, "generator.vae")
    for label, cls in spec.classes.items():
        if cls.lora is not None:
            try:
                resolve_lora_file(cls.lora.path)
            except ModelError as err:
                raise ModelError(f"classes.{label}.lora: {err}") from None
    if spec.output.dir is not None:
        check_output_folder(location(spec.output.dir))
    if spec.qc.enabled:
        check_qc_inputs(spec)


def check_qc_inputs(spec: Spec) -> None:
    """Curation's judge needs real images split into train, val and test (every class in val
    and test); a judge named by path must be a whole saved judge."""
    from synth.sources import list_real_images
    from synth.sources.splits import real_images_by_split

    real_images_by_split(spec, "qc (its judge)", list_real_images(spec))
    if spec.qc.judge != JUDGE_CLASSIFIER:
        check_judge_folder(Path(spec.qc.judge), f"qc.judge {spec.qc.judge}")


def check_judge_folder(folder: Path | Location, where: str) -> None:
    """A saved judge has all of its files; `where` names it in the message."""
    missing = [name for name in JUDGE_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(
            f"{where}: not a saved judge (no {', '.join(missing)}); give the qc/ folder of a "
            "run that trained one, or set qc.judge: classifier"
        )


def check_output_folder(out: Location) -> None:
    """Never write into a file, or into a folder that holds anything but a synth run."""
    if out.is_file():
        raise OutputError(f"{out}: is a file, not a folder; choose another --out")
    foreign = [name for name in out.names() if not is_run_entry(name)]
    if foreign:
        raise OutputError(
            f"{out}: holds {foreign[0]!r}, so it is not a synth run folder; choose an empty "
            "or new --out folder"
        )


def check_prompts(spec: Spec, plan: Plan, model: Path) -> None:
    """Every planned prompt and negative prompt of the classes whose long-prompt policy is
    `error`; the model's tokenizers load only when some class needs them."""
    refusing = []
    for cls in plan.classes:
        prompts = spec.classes[cls.label].prompts if cls.label in spec.classes else []
        # Under truncate nothing is refused: long prompts are recorded as encoded.
        if spec.generator.long_prompt_policy(prompts) == "error" and cls.synthetic > 0:
            refusing.append((cls, prompts))
    tokenizers = load_tokenizers(model) if refusing else []
    if not tokenizers:
        return  # a folder without tokenizer/ (config.json only): the worker checks instead
    for cls, prompts in refusing:
        policy = "error"
        for n, prompt in enumerate(cls.prompts):
            where = (
                f"classes.{cls.label}.prompts[{n}]"
                if isinstance(prompts, list)
                else f"classes.{cls.label} caption (prompts: from_source)"
            )
            fit_prompt(prompt, tokenizers, policy, where)
        if cls.negative_prompt:  # None (absent) or "": nothing to count
            fit_prompt(
                cls.negative_prompt, tokenizers, policy, f"classes.{cls.label}.negative_prompt"
            )
