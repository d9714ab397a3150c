"""Teachers: pipeline training reaches real quality; checkpoints reload through the
external path bit-exactly; missing offline weights fail in one line."""

import open_clip
import pytest
import torch

from clipdistill.data.splits import load_split
from clipdistill.evaluate.clip_eval import evaluate_clip, recall_at_k
from clipdistill.models import load_external, load_model_dir, resolve_pretrained
from clipdistill.models.clip import ModelError
from clipdistill.params import EvalParams, TeacherParams
from clipdistill.teachers import train as T

from conftest import run_cli


def test_pipeline_teacher_beats_chance_clearly(teacher_dir, world):
    metrics = evaluate_clip(load_model_dir(teacher_dir), load_split(world / "clip_eval"), EvalParams())
    n = metrics["count"]
    for direction in ("image_to_text", "text_to_image"):
        assert metrics["retrieval"][direction]["R@5"] > 4 * 5 / n, metrics["retrieval"]
    colour = metrics["zeroshot"]["largest_color"]
    assert colour["top1"] > 2.5 * colour["chance"] and colour["top1"] > 2 * colour["majority"], colour
    log = (teacher_dir / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,epoch,loss,lr,logit_scale" and len(log) == 1 + 6 * (1200 // 64)
    first, last = float(log[1].split(",")[2]), float(log[-1].split(",")[2])
    assert last < first - 1.0


def test_training_is_deterministic(world):
    spec = TeacherParams(arch="cd-teacher-s", epochs=1, batch_size=64)
    split = load_split(world / "pretrain")
    a, _, log_a = T.train_teacher(spec, split, show_progress=False)
    b, _, log_b = T.train_teacher(spec, split, show_progress=False)
    assert log_a == log_b
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_saved_teacher_reloads_bit_exactly_through_every_path(teacher_dir, tmp_path):
    bundle = load_model_dir(teacher_dir)
    ref = bundle.model.state_dict()
    weights = teacher_dir / "model.safetensors"
    via_open_clip, _, preprocess = open_clip.create_model_and_transforms("cd-teacher-s", pretrained=str(weights))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3}, wrapped)
    for model in (load_external("cd-teacher-s", str(weights)), via_open_clip,
                  load_external("cd-teacher-s", str(wrapped))):
        state = model.state_dict()
        assert state.keys() == ref.keys()
        assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert bundle.manifest["source"] == "pipeline" and len(bundle.manifest["weights_sha256"]) == 64


def test_model_dir_loads_with_its_saved_config_not_the_shipped_one(tmp_path):
    """A directory saved under a shipped name but another config (here 72 px) loads as saved;
    open_clip alone would resize its position embedding to the shipped 64 px."""
    from clipdistill.models.clip import create_model, save_model_dir

    registry = open_clip.factory._MODEL_CONFIGS
    shipped = registry["cd-teacher-s"]
    registry["cd-teacher-s"] = {**shipped, "vision_cfg": {**shipped["vision_cfg"], "image_size": 72}}
    try:
        model = create_model("cd-teacher-s", 0)
        save_model_dir(tmp_path / "m", model, "cd-teacher-s", {"kind": "open_clip", "name": "cd-teacher-s"}, {})
    finally:
        registry["cd-teacher-s"] = shipped
    bundle = load_model_dir(tmp_path / "m")
    assert bundle.preprocess["size"] == [72, 72] and bundle.config["vision_cfg"]["image_size"] == 72
    assert torch.equal(bundle.model.visual.positional_embedding, model.visual.positional_embedding)
    assert registry["cd-teacher-s"] is shipped  # the shipped config is back


def test_missing_offline_weights_fail_in_one_line(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("ViT-B-32/laion2b_s34b_b79k: weights not available offline: looked for "
                          "open_clip_model.safetensors or open_clip_pytorch_model.bin of hf://laion/")
    assert str(tmp_path) in msg
    with pytest.raises(ModelError, match=r"checkpoint file not found: .*nope\.safetensors"):
        resolve_pretrained("ViT-B-32", str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelError, match="unknown pretrained tag 'made_up'"):
        resolve_pretrained("ViT-B-32", "made_up")
    with pytest.raises(ModelError, match="unknown open_clip model 'ViT-Z-99'"):
        resolve_pretrained("ViT-Z-99", "x.pt")


def test_cached_weights_are_found_without_network(tmp_path, teacher_dir):
    """A file laid out like the HF cache resolves offline (no download attempted)."""
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    snap = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc123")
    assert resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path)) == \
        snap / "open_clip_model.safetensors"


def test_untrusted_pickle_and_wrong_architecture_are_refused(tmp_path, teacher_dir):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": ModelError("not a tensor")}, evil)
    with pytest.raises(ModelError, match=r"evil.pt: cannot load into cd-teacher-s"):
        load_external("cd-teacher-s", str(evil))
    with pytest.raises(ModelError, match=r"model.safetensors: cannot load into cd-teacher-m"):
        load_external("cd-teacher-m", str(teacher_dir / "model.safetensors"))


def test_external_teacher_cli_error_leaves_nothing(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(f"teachers:\n  ext: {{source: external, arch: cd-teacher-s, pretrained: {tmp_path}/gone.pt}}\n")
    proc = run_cli("teacher", "train", "--params", params, "--name", "ext", "--out", tmp_path / "out")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "checkpoint file not found" in proc.stderr and not (tmp_path / "out").exists()


def test_recall_at_k_on_known_similarities():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.1, 0.2, 0.3]])
    # ranks of the matches: 0, 1 (0.8 beats 0.5), 0
    assert recall_at_k(sim, (1, 2)) == {"R@1": pytest.approx(2 / 3), "R@2": 1.0}


def test_teacher_params_validation():
    with pytest.raises(ValueError, match="an external teacher needs `pretrained`"):
        TeacherParams(source="external", arch="ViT-B-32")
    with pytest.raises(ValueError, match="`pretrained` is for source: external"):
        TeacherParams(arch="cd-teacher-s", pretrained="x.pt")
