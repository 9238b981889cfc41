"""The plain-diffusers call that reproduces a shard row from its provenance alone. Pure."""

from __future__ import annotations

import re

from synth.spec import SCHEDULER_CLASSES

_DTYPE = re.compile(r"\((?:cuda, )?(float32|float16|bfloat16)\)")


def reproduce_snippet(row: dict, config: str | None = None) -> str:
    """Python that renders the row's image with diffusers alone. It matches the stored image
    within one 8-bit level: synth also applies its fast path (SDPA, channels-last, fused QKV
    without a LoRA) and renders in batches, both of which change float rounding. `config` is
    the run's generator.config, for a model that is a single-file checkpoint."""
    dtype_match = _DTYPE.search(row.get("device") or "")
    dtype = dtype_match.group(1) if dtype_match else "float16"
    device = "cuda" if "cuda" in (row.get("device") or "") else "cpu"
    scheduler = SCHEDULER_CLASSES[row["scheduler"]]
    lines = [
        "import torch",
        f"from diffusers import {scheduler}, StableDiffusionXLPipeline",
        "",
    ]
    extra = ""
    if row.get("vae"):
        lines[1] = f"from diffusers import AutoencoderKL, {scheduler}, StableDiffusionXLPipeline"
        lines.append(f"vae = AutoencoderKL.from_pretrained({row['vae']!r}, dtype=torch.{dtype})")
        extra = ", vae=vae"
    if config is not None:
        extra = f", config={config!r}{extra}"
    lines += [
        f"pipe = StableDiffusionXLPipeline.{'from_single_file' if config else 'from_pretrained'}(",
        f"    {row['model']!r}, dtype=torch.{dtype}{extra}",
        f").to({device!r})",
        f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config)",
    ]
    if row.get("lora"):
        lines += [
            f"pipe.load_lora_weights({row['lora']!r}, adapter_name={row['label']!r})",
            f"pipe.set_adapters([{row['label']!r}], adapter_weights=[{row['lora_scale']!r}])",
        ]
    lines += [
        "image = pipe(",
        f"    prompt={row['prompt']!r},",
        *(
            [f"    negative_prompt={row['negative_prompt']!r},"]
            if row.get("negative_prompt") is not None
            else []  # none given: diffusers' default, as synth rendered it
        ),
        f"    num_inference_steps={row['steps']},",
        f"    guidance_scale={row['guidance_scale']!r},",
        f"    height={row['height']},",
        f"    width={row['width']},",
        f"    generator=torch.Generator({device!r}).manual_seed({row['seed']}),",
        ").images[0]",
        f"image.save({row['sample_id'] + '.png'!r})",
    ]
    return "\n".join(lines) + "\n"
