"""The generator backend on the small SDXL-architecture model: LoRA, batching, retries, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synth.errors import GenerationError, ModelError
from synth.generate.pipeline import SampleGenerator, is_bad_image
from synth.generate.render import RenderSettings, ShardRenderer
from synth.plan import ClassPlan, Plan, retry_seed
from synth.spec import ClassSpec, FastPath, Generator, Lora
from synth.tools.small_sdxl import SmallSDXLSize, build_small_sdxl, save_random_lora

pytestmark = pytest.mark.slow
PROMPT = "Chest x-ray. Lung opacity. Opacity lung base right."


def _generator(model: Path, batch_size: int = 4) -> Generator:
    return Generator(
        model=str(model), dtype="float32", steps=3, height=32, width=32, batch_size=batch_size
    )


def _samples(count: int, label: str = "opacity"):
    cls = ClassPlan(label, 0, count, count, (PROMPT, "Chest x-ray. Lung opacity."), "")
    return Plan(seed=99, classes=(cls,), shard_size=count).samples_in_shard(0)


def _shard_rows(model: Path, classes: dict, count: int = 4, batch_size: int = 4) -> list[dict]:
    settings = RenderSettings(_generator(model, batch_size), classes, "sha", "t", "png")
    return ShardRenderer(settings).render(_samples(count)).table.to_pylist()


def _pixels(rows: list[dict]) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.stack([np.asarray(Image.open(BytesIO(r["image"]["bytes"]))) for r in rows])


def test_lora_changes_the_images_and_scale_zero_equals_no_lora(small_model, small_lora):
    plain = _shard_rows(small_model, {"opacity": ClassSpec(prompts=[PROMPT])})
    with_lora = _shard_rows(
        small_model, {"opacity": ClassSpec(prompts=[PROMPT], lora=Lora(path=small_lora, scale=1))}
    )
    zero = _shard_rows(
        small_model, {"opacity": ClassSpec(prompts=[PROMPT], lora=Lora(path=small_lora, scale=0))}
    )
    assert np.abs(_pixels(plain).astype(int) - _pixels(with_lora)).mean() > 1.0
    assert np.array_equal(_pixels(zero), _pixels(plain))
    assert with_lora[0]["lora_sha256"] and with_lora[0]["lora_scale"] == 1.0
    assert plain[0]["lora"] is None


def test_switching_classes_in_one_shard_uses_each_class_adapter(small_model, small_lora):
    normal_prompt = "Chest x-ray. Normal."
    classes = {
        "normal": ClassSpec(prompts=[normal_prompt]),
        "opacity": ClassSpec(prompts=[PROMPT], lora=Lora(path=small_lora, scale=1)),
    }
    plan = Plan(
        seed=5,
        classes=(
            ClassPlan("normal", 0, 2, 2, (normal_prompt,), ""),
            ClassPlan("opacity", 0, 2, 2, (PROMPT,), ""),
        ),
        shard_size=4,
    )
    samples = plan.samples_in_shard(0)

    def render(class_specs: dict, subset: list) -> list[dict]:
        settings = RenderSettings(_generator(small_model), class_specs, "sha", "t", "png")
        return ShardRenderer(settings).render(subset).table.to_pylist()

    mixed = render(classes, samples)
    normal_alone = render({"normal": classes["normal"]}, samples[:2])
    opacity_with_lora = render({"opacity": classes["opacity"]}, samples[2:])
    opacity_without_lora = render({"opacity": ClassSpec(prompts=[PROMPT])}, samples[2:])
    assert [r["label"] for r in mixed] == ["normal", "normal", "opacity", "opacity"]
    assert [r["lora"] is None for r in mixed] == [True, True, False, False]
    # Normal rows match a worker that never loaded the LoRA; opacity rows, rendered after the
    # adapter was disabled for normal and enabled again, match a LoRA-only worker.
    assert [r["image"]["bytes"] for r in mixed[:2]] == [r["image"]["bytes"] for r in normal_alone]
    assert _pixels(mixed[2:]).tolist() == _pixels(opacity_with_lora).tolist()
    assert _pixels(mixed[2:]).tolist() != _pixels(opacity_without_lora).tolist()


def test_batch_size_does_not_change_the_images(small_model):
    classes = {"opacity": ClassSpec(prompts=[PROMPT])}
    by_four = _shard_rows(small_model, classes, count=8, batch_size=4)
    by_eight = _shard_rows(small_model, classes, count=8, batch_size=8)
    by_one = _shard_rows(small_model, classes, count=8, batch_size=1)
    # Batches of 4 and more run the same CPU kernels: identical bytes.
    assert [r["image"]["bytes"] for r in by_four] == [r["image"]["bytes"] for r in by_eight]
    # Batches below 4 take small-matrix kernels whose float sums differ by ~1e-6, which can
    # move a rare pixel by one 8-bit level (see README, "Determinism").
    difference = np.abs(_pixels(by_one).astype(int) - _pixels(by_four))
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.999


def test_a_bad_image_is_regenerated_with_a_derived_seed(small_model):
    classes = {"opacity": ClassSpec(prompts=[PROMPT])}
    samples = _samples(4)
    healthy = SampleGenerator(_generator(small_model), classes).render(samples)
    victim = np.asarray(healthy[1].image)

    def check(pixels: np.ndarray) -> bool:
        # The pipeline here is healthy, so sample 1's first image stands in for a NaN output.
        as_uint8 = (pixels * 255).round().astype(np.uint8)
        return is_bad_image(pixels) or np.array_equal(as_uint8, victim)

    rendered = SampleGenerator(_generator(small_model), classes, image_check=check).render(samples)
    assert [r.attempt for r in rendered] == [1, 2, 1, 1]
    assert rendered[1].seed == retry_seed(samples[1].seed, 2) != samples[1].seed
    assert not np.array_equal(np.asarray(rendered[1].image), victim)
    assert np.array_equal(np.asarray(rendered[0].image), np.asarray(healthy[0].image))


def test_an_image_that_stays_bad_stops_the_run_with_a_clear_error(small_model):
    generator = SampleGenerator(
        _generator(small_model), {"opacity": ClassSpec(prompts=[PROMPT])},
        image_check=lambda pixels: True,
    )  # fmt: skip
    with pytest.raises(GenerationError, match="opacity-000000: image still NaN or black after 3"):
        generator.render(_samples(1))


def test_bad_image_detection():
    assert is_bad_image(np.full((4, 4, 3), np.nan, dtype=np.float32))
    assert is_bad_image(np.zeros((4, 4, 3), dtype=np.float32))
    assert not is_bad_image(np.full((4, 4, 3), 0.5, dtype=np.float32))


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelError, match="generator.model .*: folder not found"):
        SampleGenerator(_generator(tmp_path / "nope"), {})


def test_folder_that_is_not_a_diffusers_pipeline(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a diffusers folder"):
        SampleGenerator(_generator(tmp_path), {})


def test_model_folder_missing_a_component(small_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(small_model, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelError, match="generator.model .*: cannot load"):
        SampleGenerator(_generator(broken), {})


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_unusable_lora_files(small_model, small_lora, tmp_path, damage):
    target = tmp_path / "opacity.safetensors"
    if damage == "garbage":
        target.write_bytes(b"this is not a safetensors file")
    elif damage == "truncated":
        target.write_bytes(small_lora.read_bytes()[:200])
    classes = {"opacity": ClassSpec(prompts=[PROMPT], lora=Lora(path=target))}
    message = "not found" if damage == "missing" else "not a readable safetensors file"
    with pytest.raises(ModelError, match=message):
        SampleGenerator(_generator(small_model), classes)


def test_lora_made_for_a_different_model(small_model, tmp_path):
    other = build_small_sdxl(tmp_path / "other", size=SmallSDXLSize(unet_channels=(16, 32)))
    foreign = save_random_lora(other, tmp_path / "foreign")
    classes = {"opacity": ClassSpec(prompts=[PROMPT], lora=Lora(path=foreign))}
    with pytest.raises(ModelError, match="does not fit model"):
        SampleGenerator(_generator(small_model), classes)


def _render_pixels(model: Path, classes: dict, fast_path: FastPath) -> tuple[np.ndarray, tuple]:
    settings = _generator(model).model_copy(update={"fast_path": fast_path})
    generator = SampleGenerator(settings, classes)
    images = generator.render(_samples(4))
    return np.stack([np.asarray(item.image, dtype=int) for item in images]), generator.fast_path


@pytest.mark.parametrize("with_lora", [False, True])
def test_the_default_fast_path_stays_within_one_level_of_the_plain_path(
    small_model, small_lora, with_lora
):
    lora = Lora(path=small_lora, scale=1) if with_lora else None
    classes = {"opacity": ClassSpec(prompts=[PROMPT], lora=lora)}
    plain = FastPath(channels_last=False, fuse_qkv=False)
    plain_pixels, _ = _render_pixels(small_model, classes, plain)
    fast_pixels, applied = _render_pixels(small_model, classes, FastPath())
    assert np.abs(fast_pixels - plain_pixels).max() <= 1
    # Fused projections would bypass the LoRA on to_q/to_k/to_v, so they are skipped with one
    # (the images above would otherwise differ by far more than a level).
    assert ("fuse_qkv" in applied) is not with_lora
    assert "channels_last" in applied


def test_out_of_gpu_memory_names_the_settings_that_help(small_model, monkeypatch):
    generator = SampleGenerator(_generator(small_model), {"opacity": ClassSpec(prompts=[PROMPT])})

    def out_of_memory(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(generator, "pipeline", out_of_memory)
    with pytest.raises(GenerationError, match="out of GPU memory.*batch_size.*vae_decode"):
        generator.render(_samples(1))


def test_an_absent_negative_prompt_is_diffusers_default_and_recorded_as_absent(small_model):
    """No negative_prompt: what a plain diffusers call that leaves it out renders (SDXL's zero
    embeddings); "" encodes the empty string, another image; each is recorded as given."""
    from io import BytesIO

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from PIL import Image

    def rows(negative):
        cls = ClassPlan("opacity", 0, 2, 2, (PROMPT,), negative)
        samples = Plan(seed=99, classes=(cls,), shard_size=2).samples_in_shard(0)
        settings = RenderSettings(_generator(small_model, 2), {"opacity": ClassSpec(
            prompts=[PROMPT], negative_prompt=negative)}, "sha", "t", "png")  # fmt: skip
        return ShardRenderer(settings).render(samples).table.to_pylist()

    absent, empty = rows(None), rows("")
    assert absent[0]["negative_prompt"] is None and empty[0]["negative_prompt"] == ""
    assert "negative_prompt" not in Image.open(BytesIO(absent[0]["image"]["bytes"])).text
    assert np.abs(_pixels(absent).astype(int) - _pixels(empty)).max() > 8
    pipeline = StableDiffusionXLPipeline.from_pretrained(small_model)
    pipeline.scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    plain = pipeline(
        prompt=PROMPT, num_inference_steps=3, guidance_scale=7.0, height=32, width=32,
        generator=torch.Generator().manual_seed(absent[0]["seed"]), output_type="np",
    ).images[0]  # fmt: skip
    assert np.abs(np.round(plain * 255) - _pixels(absent[:1])[0]).max() <= 1


def test_chunked_and_weighted_prompts_without_a_negative_prompt_use_zeros(small_model):
    """The compel path does what diffusers does for an absent negative prompt."""
    base = _generator(small_model, 2)
    plain = SampleGenerator(base, {"opacity": ClassSpec(prompts=[PROMPT])})
    weighted = SampleGenerator(
        base.model_copy(update={"prompt_weighting": "a1111"}),
        {"opacity": ClassSpec(prompts=[PROMPT])},
    )
    samples = [s for s in _samples(2)]
    samples = [
        type(s)(**{**s.__dict__, "prompt": PROMPT, "negative_prompt": None}) for s in samples
    ]
    a = [np.asarray(r.image, dtype=int) for r in plain.render(samples)]
    b = [np.asarray(r.image, dtype=int) for r in weighted.render(samples)]
    for x, y in zip(a, b, strict=True):
        assert np.abs(x - y).max() <= 1


def test_a_lora_per_class_loads_without_peft_warning_of_multiple_adapters(small_model, small_lora):
    import warnings

    classes = {
        label: ClassSpec(prompts=[PROMPT], lora=Lora(path=small_lora)) for label in ("a", "b")
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = SampleGenerator(_generator(small_model), classes, device=torch.device("cpu"))
    assert sorted(engine.adapters) == ["a", "b"]
    assert not [w for w in caught if "peft_config" in str(w.message)]
