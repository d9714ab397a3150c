"""Data-parallel distillation: two gloo processes under torchrun give the single-process
gradients on the same global batch, and `clipdistill distill` under torchrun writes once."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import BIN, REPO

HELPER = REPO / "tests" / "helpers" / "ddp_grads.py"


def torchrun(nproc: int, *args, timeout=300):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    # --standalone: the rendezvous store binds port 0 itself, so no port is picked, released and raced for
    cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *cmd], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # two spawned gloo ranks (~20 s): CI runs it
def test_two_gloo_ranks_give_the_single_process_gradients(tmp_path):
    torchrun(2, HELPER, tmp_path / "ddp.pt")
    subprocess.run([sys.executable, HELPER, tmp_path / "single.pt"], check=True, timeout=300,
                   env={**os.environ, "WORLD_SIZE": "1"})
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert ddp["world"] == 2 and single["world"] == 1
    assert torch.allclose(ddp["loss"], single["loss"], rtol=1e-5, atol=1e-6)
    assert ddp["grads"].keys() == single["grads"].keys() and len(single["grads"]) > 10
    for name, grad in single["grads"].items():
        scale = grad.abs().max().clamp_min(1e-8)
        assert (ddp["grads"][name] - grad).abs().max() / scale < 1e-4, name


@pytest.mark.slow
def test_distill_under_torchrun_trains_like_one_process_and_writes_once(tmp_path, smoke_data):
    from clipdistill.data.splits import load_split
    from clipdistill.features.store import extract
    from clipdistill.models import create_model
    from clipdistill.models.clip import default_tokenizer_spec, save_model_dir
    from clipdistill.params import FeatureParams

    teacher = tmp_path / "teacher"
    save_model_dir(teacher, create_model("cd-teacher-s", 0), "cd-teacher-s",
                   default_tokenizer_spec("cd-teacher-s"), {"source": "test"})
    from clipdistill.models import load_model_dir

    extract(load_model_dir(teacher), load_split(smoke_data / "distill"), FeatureParams(), tmp_path / "store")
    args = ["--params", REPO / "configs" / "smoke.yaml", "distill", "--teacher-name", "s", "--student", "xs",
            "--method", "clipkd", "--seed", "0", "--teacher", teacher, "--features", tmp_path / "store",
            "--data", smoke_data / "distill"]
    torchrun(2, "--no-python", BIN / "clipdistill", *args[2:], "--params", args[1], "--out", tmp_path / "ddp")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([BIN / "clipdistill", *args[2:], "--params", args[1], "--out", tmp_path / "one"],
                   env=env, check=True, capture_output=True, timeout=300)
    logs = [(tmp_path / d / "train_log.csv").read_text().splitlines() for d in ("ddp", "one")]
    assert logs[0][0] == logs[1][0] and len(logs[0]) == len(logs[1]) > 2
    # the last row comes after every optimizer step: it differs unless the ranks really averaged gradients
    header = logs[0][0].split(",")
    last = [dict(zip(header, map(float, log[-1].split(",")))) for log in logs]
    assert last[0]["step"] == last[1]["step"] == len(logs[0]) - 2
    for key in header[2:]:
        assert last[0][key] == pytest.approx(last[1][key], rel=1e-3, abs=1e-6), key
    from safetensors.torch import load_file

    ddp, one = (load_file(tmp_path / d / "model.safetensors") for d in ("ddp", "one"))
    assert ddp.keys() == one.keys()
    start = create_model("cd-student-xs", 0).state_dict()
    for name, w in one.items():
        moved = (w - start[name]).abs().max()  # how far training moved it: the scale for its error
        if moved > 0:
            assert (ddp[name] - w).abs().max() <= 1e-2 * moved, name
    assert not list(tmp_path.glob(".ddp.ckpt")) and sorted(p.name for p in tmp_path.iterdir() if "ddp" in p.name) == ["ddp"]


@pytest.mark.slow  # two spawned gloo ranks (~20 s): CI runs it
def test_vqa_step_on_two_gloo_ranks_gives_the_single_process_gradients(tmp_path):
    """Ranks hold different numbers of answer tokens: each rank's loss is normalised by the
    global count, so the summed gradients are the single-process ones."""
    helper = REPO / "tests" / "helpers" / "ddp_vqa_grads.py"
    torchrun(2, helper, tmp_path / "ddp.pt")
    subprocess.run([sys.executable, helper, tmp_path / "single.pt"], check=True, timeout=300,
                   env={**os.environ, "WORLD_SIZE": "1"})
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert ddp["world"] == 2 and torch.allclose(ddp["loss"], single["loss"], rtol=1e-5)
    assert ddp["grads"].keys() == single["grads"].keys()
    assert any("multi_modal_projector" in k for k in single["grads"]) and any("layers.0" in k for k in single["grads"])
    for name, grad in single["grads"].items():
        scale = grad.abs().max().clamp_min(1e-8)
        assert (ddp["grads"][name] - grad).abs().max() / scale < 1e-4, name
