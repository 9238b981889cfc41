from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synth.errors import SpecError
from synth.spec import load_spec, parse_spec
from tests.conftest import base_spec, write_spec


def _yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _spec(**changes) -> dict:
    data = base_spec(Path("/models/sdxl"))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return data


def test_a_valid_spec_parses():
    spec = parse_spec(_yaml(_spec()))
    assert spec.labels == ["opacity", "normal"]
    assert spec.generator.steps == 3
    assert spec.compute.ray_address is None


def test_unknown_key_names_line_path_and_suggests_the_near_miss():
    text = _yaml(_spec(generator__stepz=30))
    with pytest.raises(SpecError) as err:
        parse_spec(text, "opacity.yaml")
    message = str(err.value)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "stepz" in row)
    assert message.startswith(f"opacity.yaml:{line}: generator.stepz: unknown key 'stepz'")
    assert "did you mean 'steps'?" in message


def test_unknown_key_inside_a_tagged_union_drops_the_tag_from_the_path():
    data = _spec()
    data["source"] = {"kind": "manifest", "pathh": "real.csv", "labels": ["opacity", "normal"]}
    with pytest.raises(
        SpecError, match=r"source\.pathh: unknown key 'pathh' \(did you mean 'path'"
    ):
        parse_spec(_yaml(data))


def test_wrong_type_says_what_was_given():
    with pytest.raises(SpecError, match=r"generator\.steps: .*integer.*'many'"):
        parse_spec(_yaml(_spec(generator__steps="many")))


@pytest.mark.parametrize(
    ("key", "value"),
    [("generator__steps", "30"), ("seed", True), ("generator__guidance_scale", "7")],
)
def test_values_are_not_coerced_from_other_types(key, value):
    with pytest.raises(SpecError, match="should be a valid"):
        parse_spec(_yaml(_spec(**{key: value})))


def test_missing_required_key():
    with pytest.raises(SpecError, match=r"generator\.model: required key is missing"):
        parse_spec(_yaml(_spec(generator__model=None)))


def test_malformed_yaml_gives_line_and_column():
    with pytest.raises(SpecError, match=r"^bad\.yaml:2:\d+: malformed YAML: expected .,. or"):
        parse_spec("name: x\nseed: [1, 2}\n", "bad.yaml")


def test_proportions_must_sum_to_one():
    data = _spec()
    data["target"] = {"distribution": {"opacity": 0.5, "normal": 0.6}}
    with pytest.raises(SpecError, match="sum to 1.1; they must sum to 1"):
        parse_spec(_yaml(data))


def test_exactly_one_target_mode():
    data = _spec()
    data["target"] = {"distribution": {"opacity": 0.5, "normal": 0.5}, "synthetic": {"opacity": 1}}
    with pytest.raises(SpecError, match="exactly one of target.distribution or target.synthetic"):
        parse_spec(_yaml(data))


def test_negative_counts_are_rejected():
    with pytest.raises(
        SpecError, match=r"target\.synthetic\.opacity: .*greater than or equal to 0"
    ):
        parse_spec(_yaml(_spec(target__synthetic={"opacity": -3})))


def test_target_label_must_be_a_source_label():
    with pytest.raises(SpecError, match=r"target\.synthetic\.effusion is not in source\.labels"):
        parse_spec(_yaml(_spec(target__synthetic={"effusion": 3})))


def test_target_label_needs_a_class_entry():
    data = _spec()
    del data["classes"]["normal"]
    with pytest.raises(SpecError, match=r"target\.synthetic\.normal has no entry under classes"):
        parse_spec(_yaml(data))


def test_distribution_must_cover_every_label():
    data = _spec()
    data["target"] = {"distribution": {"opacity": 1.0}}
    with pytest.raises(SpecError, match=r"no proportion for \['normal'\]"):
        parse_spec(_yaml(data))


def test_empty_prompt_list_is_rejected():
    data = _spec()
    data["classes"]["opacity"]["prompts"] = []
    with pytest.raises(SpecError, match=r"classes\.opacity\.prompts: .*at least 1 item"):
        parse_spec(_yaml(data))


@pytest.mark.parametrize("label", ["../../x", ".hidden", "a/b", ""])
def test_labels_that_could_escape_the_output_folder_are_rejected(label):
    data = _spec()
    data["source"]["counts"] = {label: 1, "normal": 1}
    with pytest.raises(SpecError, match="should match pattern"):
        parse_spec(_yaml(data))


def test_lora_scale_out_of_range():
    data = _spec()
    data["classes"]["opacity"]["lora"] = {"path": "x.safetensors", "scale": 5}
    with pytest.raises(
        SpecError, match=r"classes\.opacity\.lora\.scale: .*less than or equal to 2"
    ):
        parse_spec(_yaml(data))


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path):
    (tmp_path / "models" / "m").mkdir(parents=True)
    data = _spec(generator__model="models/m")
    data["classes"]["opacity"]["lora"] = {"path": "loras/opacity.safetensors"}
    data["output"]["dir"] = "out"
    spec = load_spec(write_spec(tmp_path / "specs", data))
    assert spec.generator.model == "models/m"  # not under specs/: kept as a hub-style id
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.generator.model == str(tmp_path / "models" / "m")
    assert spec.classes["opacity"].lora.path == tmp_path / "loras" / "opacity.safetensors"
    assert spec.output.dir == str(tmp_path / "out")


def test_missing_spec_file():
    with pytest.raises(SpecError, match="file not found"):
        load_spec("/no/such/spec.yaml")


def test_duplicate_keys_are_refused_with_the_line_of_each():
    text = "name: t\nseed: 1\nname: u\n"
    with pytest.raises(SpecError, match=r"<spec>:3:1: duplicate key 'name' \(first at 1:1\)"):
        parse_spec(text)
    counts = "source: {kind: counts, counts: {opacity: 20, normal: 60, opacity: 5}}\n"
    with pytest.raises(SpecError, match=r"duplicate key 'opacity' \(first at 1:33\)"):
        parse_spec(counts)


def test_an_alias_bomb_is_refused_at_once_by_its_expanded_size():
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"aliases expand to [\d,]+ values, more than the 100,000"):
        parse_spec("\n".join(lines) + "\n")
    assert time.perf_counter() - started < 2


def test_an_error_quotes_at_most_a_bounded_piece_of_the_input():
    text = _yaml(_spec(seed="x" * 5000))
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    message = str(err.value)
    assert "(5,002 characters)" in message and len(message) < 600


def test_a_union_member_name_never_reaches_the_message():
    text = _yaml(_spec(target__total=-5))
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    message = str(err.value)
    assert "constrained" not in message and "target.total: " in message
    assert "greater than 0" in message and "'auto'" in message


def test_yaml_merge_keys_still_work_and_may_be_overridden():
    text = "defaults: &defaults {steps: 3, height: 32}\nmerged: {<<: *defaults, steps: 5}\n"
    from synth.spec import _load_yaml

    assert _load_yaml(text, "<spec>")["merged"] == {"steps": 5, "height": 32}
