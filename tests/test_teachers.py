"""Teachers: pipeline training reaches real quality; checkpoints reload through the
external path bit-exactly; missing offline weights fail in one line."""

import json
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from clipdistill.data.splits import load_split
from clipdistill.evaluate.clip_eval import evaluate_clip, recall_at_k
from clipdistill.models import load_external, load_model_dir, resolve_pretrained
from clipdistill.models.clip import ModelError, resolve_external
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
    with pytest.raises(ValueError, match="brings its own config and weights"):
        TeacherParams(source="external", arch="hf-hub:acme/tiny", pretrained="laion2b_s34b_b79k")
    with pytest.raises(ValueError, match="brings its own config and weights"):
        TeacherParams(arch="local-dir:/models/tiny")  # source defaults to pipeline
    assert TeacherParams(source="external", arch="local-dir:/models/tiny").pretrained is None


# ---------------------------------------------- hf-hub: and local-dir: teachers, offline

# a real open_clip layout (BPE vocabulary, context 77) at a size that builds in a second
TINY_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                            "patch_size": 16},
            "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
HUB_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _hub_snapshot(cache: Path, repo: str, weights: str = "open_clip_model.safetensors") -> tuple[Path, dict]:
    """A repo laid out as huggingface_hub caches it (refs/main -> snapshots/<rev>/), holding an
    open_clip_config.json and randomly initialised weights; returns (snapshot, state dict)."""
    from safetensors.torch import save_file

    from clipdistill.models.clip import _registered

    with _registered("tiny-hub-test", TINY_CFG):
        torch.manual_seed(7)
        state = open_clip.create_model("tiny-hub-test").state_dict()
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0123abcd")
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": HUB_PREPROCESS}))
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, snap / weights)
    else:
        torch.save(state, snap / weights)
    return snap, state


@pytest.mark.parametrize("kind", ["hf-hub", "local-dir"])
def test_hub_and_folder_teachers_import_offline_and_reload_with_their_config(kind, tmp_path, monkeypatch):
    """`teacher train` for arch hf-hub:ORG/NAME (found in HF_HUB_CACHE with HF_HUB_OFFLINE=1) or
    local-dir:PATH: the model directory holds the repo's weights bit for bit and its config, and
    reloads with the repo's preprocessing and an open_clip tokenizer of the config's context length,
    with nothing of the repo in open_clip's registry afterwards."""
    cache = tmp_path / "hub"
    snap, state = _hub_snapshot(cache, "acme/tiny-clip", "open_clip_pytorch_model.bin" if kind == "local-dir"
                                else "open_clip_model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arch = "hf-hub:acme/tiny-clip" if kind == "hf-hub" else f"local-dir:{snap}"
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"teachers": {"ext": {"source": "external", "arch": arch}}}))
    run_cli("teacher", "train", "--params", params, "--name", "ext", "--out", tmp_path / "t", check=True)
    bundle = load_model_dir(tmp_path / "t")
    assert bundle.config == TINY_CFG and bundle.model_name not in open_clip.factory._MODEL_CONFIGS
    loaded = bundle.model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert bundle.preprocess["mean"] == HUB_PREPROCESS["mean"] and bundle.preprocess["std"] == HUB_PREPROCESS["std"]
    tokens = bundle.tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 40) and bundle.model.encode_text(tokens).shape == (1, 32)


def test_hub_and_folder_teachers_missing_parts_fail_in_one_line(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap, _ = _hub_snapshot(cache, "acme/tiny-clip")
    with pytest.raises(ModelError) as info:
        resolve_external("hf-hub:acme/other", cache_dir=str(cache))
    assert str(info.value) == (f"hf-hub:acme/other: not available offline: looked for open_clip_config.json of "
                               f"hf://acme/other in {cache}")
    with pytest.raises(ModelError, match=r"local-dir:.*nowhere: folder not found: "):
        resolve_external(f"local-dir:{tmp_path / 'nowhere'}")
    with pytest.raises(ModelError, match="brings its own weights; leave `pretrained` unset"):
        resolve_external(f"local-dir:{snap}", "laion2b_s34b_b79k")
    config = (snap / "open_clip_config.json").read_text()
    (snap / "open_clip_config.json").write_text('{"preprocess_cfg": {}}')
    with pytest.raises(ModelError, match=r'open_clip_config.json: expected \{"model_cfg"'):
        resolve_external(f"local-dir:{snap}")
    (snap / "open_clip_config.json").write_text(config)
    (snap / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"looked for open_clip_model.safetensors or open_clip_pytorch_model.bin of "
                                         r"hf://acme/tiny-clip in "):
        resolve_external("hf-hub:acme/tiny-clip", cache_dir=str(cache))
    # through the CLI: exit 2, one line, no model directory
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"teachers": {"ext": {"source": "external", "arch": "hf-hub:acme/gone"}}}))
    proc = run_cli("teacher", "train", "--params", params, "--name", "ext", "--out", tmp_path / "t")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "hf://acme/gone" in proc.stderr and not (tmp_path / "t").exists()


def test_group_order_keeps_hard_negative_groups_together_in_batches():
    from clipdistill.teachers.train import group_order

    order = group_order(42, 4, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(42))
    assert order.tolist() != list(range(42)), "not shuffled"
    for b in range(0, 40, 8):  # batches of 8 (a multiple of 4) hold whole groups
        batch = set(order[b:b + 8].tolist())
        assert all({i - i % 4 + k for k in range(4)} <= batch for i in batch), sorted(batch)
    assert order[40:].tolist() == [40, 41], "the short group goes last"


def test_samples_trains_on_the_first_n_pretrain_pairs(world):
    from clipdistill.io import DataError

    split = load_split(world / "pretrain")
    _, _, log = T.train_teacher(TeacherParams(arch="cd-teacher-s", epochs=2, batch_size=64, samples=256),
                                split, show_progress=False)
    assert len(log) == 2 * (256 // 64)
    with pytest.raises(DataError, match=r"samples 99999 > the \d+ samples of the pretrain split"):
        T.train_teacher(TeacherParams(arch="cd-teacher-s", samples=99999), split, show_progress=False)
    with pytest.raises(ValueError, match="`samples` is for pipeline teachers"):
        TeacherParams(source="external", arch="cd-teacher-s", pretrained="x.pt", samples=10)
