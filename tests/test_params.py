"""params.yaml: one typed model, a generated schema that agrees with it, one-line errors."""

import copy

import jsonschema
import pytest
import yaml

from clipdistill import params as P
from clipdistill.io import read_json

from conftest import REPO, SMOKE

SCHEMA = REPO / "workflow" / "schemas" / "params.schema.json"


def test_committed_schema_is_generated_from_the_model():
    assert SCHEMA.read_text() == P.json_schema_text(), "run `clipdistill params schema --out workflow/schemas/params.schema.json`"


@pytest.mark.parametrize("path", [REPO / "params.yaml", SMOKE, REPO / "configs" / "full.yaml",
                                  REPO / "configs" / "ladder.yaml"])
def test_shipped_params_are_valid_for_model_and_schema(path):
    P.load_params(path)
    jsonschema.validate(yaml.safe_load(path.read_text()), read_json(SCHEMA))


BAD = {
    "negative size": (("data", "splits", "pretrain", "size"), -5,
                      "data.splits.pretrain.size = -5: Input should be greater than or equal to 1"),
    "unknown style": (("data", "splits", "distill", "style"), "sketchy",
                      "data.splits.distill.style = 'sketchy': Input should be 'plain', 'textured' or 'shifted_palette'"),
    "unknown key": (("data", "colour_count"), 3, "data.colour_count = 3: Extra inputs are not permitted"),
    "wrong type": (("data", "image_size"), "big", "data.image_size = 'big': Input should be a valid integer"),
    "too small image": (("data", "image_size"), 8, "data.image_size = 8: Input should be greater than or equal to 16"),
    "position rate > 1": (("data", "caption_position_rate"), 1.5,
                          "data.caption_position_rate = 1.5: Input should be less than or equal to 1"),
    "objects too big": (("data", "object_scale"), 1.5,
                        "data.object_scale = 1.5: Input should be less than or equal to 1.15"),
    "no hard-negative group": (("data", "splits", "pretrain", "hard_negatives"), 0,
                               "data.splits.pretrain.hard_negatives = 0: Input should be greater than or equal to 1"),
    "shape-negative rate > 1": (("data", "splits", "pretrain", "hard_negative_shape_rate"), 1.2,
                                ("data.splits.pretrain.hard_negative_shape_rate = 1.2: Input should be less than "
                                 "or equal to 1")),
    "colour refs < 0": (("data", "position_color_ref_rate"), -0.1,
                        "data.position_color_ref_rate = -0.1: Input should be greater than or equal to 0"),
}


def _with(path, keys, value):
    raw = copy.deepcopy(yaml.safe_load(SMOKE.read_text()))
    node = raw
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    path.write_text(yaml.safe_dump(raw))
    return raw


@pytest.mark.parametrize("case", BAD)
def test_bad_values_get_one_line_naming_key_value_and_allowed(tmp_path, case):
    keys, value, expected = BAD[case]
    raw = _with(tmp_path / "params.yaml", keys, value)
    for load in (lambda: P.load_params(tmp_path / "params.yaml"),
                 lambda: P.load_section(tmp_path / "params.yaml", "data")):
        with pytest.raises(P.ParamsError) as info:
            load()
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(str(tmp_path / "params.yaml")) and expected in msg
    with pytest.raises(jsonschema.ValidationError):  # the schema agrees
        jsonschema.validate(raw, read_json(SCHEMA))


def test_cross_field_rules(tmp_path):
    _with(tmp_path / "p.yaml", ("data", "min_objects"), 5)
    with pytest.raises(P.ParamsError, match=r"min_objects \(5\) > max_objects \(4\)"):
        P.load_section(tmp_path / "p.yaml", "data")
    raw = yaml.safe_load(SMOKE.read_text())
    del raw["data"]["splits"]["clip_eval"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(P.ParamsError, match="splits is missing \\['clip_eval'\\]"):
        P.load_section(tmp_path / "p.yaml", "data")
    # the VQA splits are whatever vqa.train_split / vqa.eval_splits name: the whole file must have them
    raw = yaml.safe_load(SMOKE.read_text())
    del raw["data"]["splits"]["vqa_eval"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert "vqa_eval" not in P.load_section(tmp_path / "p.yaml", "data").splits
    with pytest.raises(P.ParamsError, match=r"vqa.eval_splits: \['vqa_eval'\] not data splits"):
        P.load_params(tmp_path / "p.yaml")


def test_file_level_errors(tmp_path):
    with pytest.raises(P.ParamsError, match="params file not found"):
        P.load_params(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("data: [unclosed\n  x: 1\n")
    with pytest.raises(P.ParamsError, match=r"p.yaml:\d+: malformed YAML"):
        P.load_params(tmp_path / "p.yaml")
    with pytest.raises(P.ParamsError, match="unknown params section 'nope'"):
        P.load_section(SMOKE, "nope")


def test_a_stage_reads_only_its_own_section(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["someone_elses_stage"] = {"anything": [1, 2]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert P.load_section(tmp_path / "p.yaml", "data") == P.load_section(SMOKE, "data")
    with pytest.raises(P.ParamsError, match="someone_elses_stage"):
        P.load_params(tmp_path / "p.yaml")


@pytest.mark.parametrize("keys, value, message", [
    (("distill", "grid", "baselines"), ["clipkd"], r"grid.baselines \['clipkd'\] use teacher targets"),
    (("distill", "grid", "methods"), ["baseline", "clipkd"], r"grid.methods \['baseline'\] use no teacher targets"),
    (("teachers", "none"), {"arch": "cd-teacher-s"}, "'none' is reserved"),
])
def test_grid_separates_teacher_free_baselines_from_kd_methods(tmp_path, keys, value, message):
    _with(tmp_path / "p.yaml", keys, value)
    with pytest.raises(P.ParamsError, match=message):
        P.load_params(tmp_path / "p.yaml")


def test_a_method_level_weight_scales_only_its_teacher_terms():
    d = P.DistillParams.model_validate({"methods": {"clipkd": {"clip": 1, "crd": {"weight": 1, "temperature": 2},
                                                               "fd": 2000, "weight": 3}}})
    got = {k: v.options() for k, v in d.methods["clipkd"].items()}
    assert got == {"clip": {"weight": 1.0}, "crd": {"weight": 3.0, "temperature": 2.0}, "fd": {"weight": 6000.0}}


@pytest.mark.parametrize("harnesses, message", [
    ({"lmms": [], "mieb": [], "vlmevalkit": ["vqa_eval"]},
     "eval.harnesses.vlmevalkit = ['vqa_eval']: Extra inputs are not permitted"),
    ({"lmms": ["vqa_val"], "mieb": []}, "eval.harnesses.lmms: ['vqa_val'] not data splits; known: clip_eval,"),
    ({"lmms": ["vqa_eval"]}, "eval.harnesses.mieb: Field required"),  # DVC's templating needs both lists
    ({"lmms": [], "mieb": ["clip_eval", "clip_eval"]}, "a split is listed twice in ['clip_eval', 'clip_eval']"),
])
def test_a_bad_harness_switch_is_one_line(tmp_path, harnesses, message):
    """A ParamsError: `clipdistill params check` (and every stage) prints it and exits 2 (test_cli)."""
    _with(tmp_path / "params.yaml", ("eval", "harnesses"), harnesses)
    with pytest.raises(P.ParamsError) as info:
        P.load_params(tmp_path / "params.yaml")
    assert "\n" not in str(info.value) and message in str(info.value), str(info.value)


@pytest.mark.parametrize("seeds, message", [
    ([], "vqa.seeds = []: List should have at least 1 item"),
    ([0, 1, 0], "vqa.seeds = [0, 1, 0]: repeated VLM seed(s) [0]: each seed is one VLM, list it once"),
    ([0, -1], "vqa.seeds.1 = -1: Input should be greater than or equal to 0"),
    ("0", "vqa.seeds = '0': Input should be a valid list"),
])
def test_bad_vlm_seeds_get_one_line_and_exit_2(tmp_path, seeds, message):
    """Issue 16: `vqa.seeds` is a non-empty list of distinct seeds ≥ 0; the CLI says which in
    one line and exits 2 (the schema Snakemake validates with agrees)."""
    import subprocess

    from conftest import BIN

    raw = _with(tmp_path / "params.yaml", ("vqa", "seeds"), seeds)
    with pytest.raises(P.ParamsError) as info:
        P.load_section(tmp_path / "params.yaml", "vqa")
    assert "\n" not in str(info.value) and message in str(info.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, read_json(SCHEMA))
    proc = subprocess.run([BIN / "clipdistill", "params", "check", "--params", tmp_path / "params.yaml"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_the_old_single_vqa_seed_names_its_replacement(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["vqa"]["seed"] = 0
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(P.ParamsError, match=r"`seed` was replaced by `seeds`, a list of VLM seeds"):
        P.load_section(tmp_path / "p.yaml", "vqa")
    assert P.VQAParams().seeds == [0, 1]  # default: two VLMs per encoder


@pytest.mark.parametrize("entry", [
    {"format": "vqav2", "questions": "q.json", "annotations": "a.json", "image_root": "/img"},
    {"format": "gqa", "questions": "q.json", "image_root": "/img"}])
def test_every_vqa_import_refuses_an_image_pattern_with_an_unknown_field(entry):
    """The pattern check lives in the shared base of the VQA formats: each must still run it."""
    from pydantic import TypeAdapter, ValidationError

    split = TypeAdapter(P.AnySplit)
    assert split.validate_python({**entry, "image_pattern": "{image_id}.png"}).format == entry["format"]
    with pytest.raises(ValidationError, match=r"unknown field\(s\) \['imageId'\]"):
        split.validate_python({**entry, "image_pattern": "{imageId}.png"})


@pytest.mark.parametrize("keys, value, message", [
    (("distill", "grid", "data"), ["distill", "distill_typo"],
     "distill.grid.data: ['distill_typo'] not data splits; known: clip_eval, distill, distill_shifted,"),
    (("distill", "grid", "data"), ["distill", "distill"],
     "distill.grid.data = ['distill', 'distill']: level(s) ['distill'] listed twice: each is one set of runs"),
    (("distill", "grid", "data"), [], "distill.grid.data = []: List should have at least 1 item"),
    (("distill", "grid", "durations"), [1, 0], "distill.grid.durations = [1, 0]: durations [0] must be ≥ 1"),
    (("distill", "grid", "durations"), [2, 2], "level(s) [2] listed twice"),
    (("features", "split"), "distill", "features: `split` moved to distill.grid.data, the list of splits students "
                                       "distil on (e.g. data: [distill])"),
])
def test_a_bad_regime_level_is_one_line_and_exit_2(tmp_path, keys, value, message):
    """distill.grid.data names data splits, distill.grid.durations multiples ≥ 1, each level once;
    `clipdistill params check` prints the problem in one line and exits 2."""
    import subprocess

    from conftest import BIN

    _with(tmp_path / "params.yaml", keys, value)
    with pytest.raises(P.ParamsError) as info:
        P.load_params(tmp_path / "params.yaml")
    assert "\n" not in str(info.value) and message in str(info.value), str(info.value)
    proc = subprocess.run([BIN / "clipdistill", "params", "check", "--params", tmp_path / "params.yaml"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_imported_question_split_cannot_be_distilled_on(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_real"] = {"format": "vqav2", "questions": "q.json", "annotations": "a.json",
                                         "image_root": "/img", "image_pattern": "{image_id}.png"}
    raw["distill"]["grid"]["data"] = ["distill", "vqa_real"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(P.ParamsError, match=r"distill.grid.data: split 'vqa_real' is imported from vqav2"):
        P.load_params(tmp_path / "p.yaml")
