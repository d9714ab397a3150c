"""params `runtime` (device, precision) on a machine without a GPU.

- The default path is unchanged: every model stage of the smoke study gives the very bytes it
  gave before `runtime` existed (golden digests recorded from the code before the change).
- Every stage honours the device: a simulated accelerator (see `SimulatedDevice`) fails a
  stage that leaves a model or a batch behind.
- bf16 and fp16 autocast on the CPU: losses finite, training reduces the loss, weights and
  saved files stay fp32, the feature store keeps its dtype; fp16 really uses its GradScaler.
- `device: cuda` without CUDA is a one-line error, exit 2, before any work; under torchrun
  each rank takes `cuda:LOCAL_RANK` and the process group is NCCL only for CUDA stages.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from clipdistill.params import ParamsError, RuntimeParams, load_section
from clipdistill.training import runtime as R
from conftest import REPO, SMOKE, run_cli

sys.path.insert(0, str(REPO / "tests" / "helpers"))
import tiny_pipeline  # noqa: E402

# `python tests/helpers/tiny_pipeline.py` on the code before `runtime` existed (commit bf10a2b),
# torch 2.14.1, one thread; the students and what reads them (eval metrics, VLM) re-recorded
# when the KD losses were made faithful to CLIP-KD (issue #18: the smoke study's clipkd
# changed). The canary is a small fp32 computation whose bytes depend on the CPU's kernels:
# where it differs, this machine rounds differently and the golden cannot apply.
GOLDEN = {
    "features/shard-000000.safetensors": "21710d638a7ec92f",
    "features/shard-000001.safetensors": "5b754d6255b4b548",
    "features/shard-000002.safetensors": "1683912c88ded797",
    "lm/model.safetensors": "d23df020e572fff0",
    "lm/train_log.csv": "ed0444c5a0ddd1e2",
    "metrics_eval.json": "fda0c40994c50bd5",
    "metrics_vqa.json": "60dfd4dd5bea013c",  # + answer_health.constant_types, then + by_objects (issue #16)
    "student_online/model.safetensors": "0d11d0546a915a93",
    "student_online/train_log.csv": "0bda2fed6f3f3cbe",
    "student_store/model.safetensors": "5554402dfba191a8",
    "student_store/train_log.csv": "18656c5ea8000891",
    "teacher/model.safetensors": "0e1d5d4bf22543e7",
    "teacher/train_log.csv": "24687d98d219e4aa",
    "vlm/answers.jsonl": "4920358a1f4e39ee",
    "vlm/model/model.safetensors": "c929454343e9fdfb",
    "vlm/per_type.csv": "df1d0e6c451dcaa8",
    "vlm/train_log.csv": "6125cfca9e121d2d",
}
GOLDEN_CANARY = "3b57f30d59b146b1"


def numerics_canary() -> str:
    """sha256 of a seeded conv + attention + AdamW step in fp32, one thread."""
    import hashlib

    torch.manual_seed(0)
    conv, attn = torch.nn.Conv2d(3, 16, 4, stride=4), torch.nn.MultiheadAttention(16, 4, batch_first=True)
    opt = torch.optim.AdamW([*conv.parameters(), *attn.parameters()], lr=1e-3)
    x = conv(torch.randn(8, 3, 32, 32)).flatten(2).transpose(1, 2)
    attn(x, x, x)[0].square().mean().backward()
    opt.step()
    data = b"".join(p.detach().numpy().tobytes() for p in [*conv.parameters(), *attn.parameters()])
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs every stage (CLIPDISTILL_THREADS=1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the default path is unchanged


def test_default_cpu_path_gives_the_bytes_of_the_code_before_runtime(smoke_data, tmp_path, one_thread):
    """Teacher, store, students (store and online teacher), CLIP metrics, LM, VLM and its
    answers: identical bytes with the default runtime as before the change."""
    if numerics_canary() != GOLDEN_CANARY:
        pytest.skip(f"this CPU's fp32 kernels round differently (canary {numerics_canary()}); "
                    "the golden digests were recorded elsewhere")
    default = R.setup(RuntimeParams())  # what the CLI resolves from the shipped params (no CUDA here)
    assert default == R.CPU
    assert tiny_pipeline.digests(tiny_pipeline.run_stages(tmp_path, smoke_data, default)) == GOLDEN


# ------------------------------------------------------------------ every stage honours the device


def _tensors(value) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _on(t: torch.Tensor) -> bool:
    return getattr(t, "_simulated_device", False)


def _mark(value) -> None:
    for t in _tensors(value):
        t._simulated_device = True


def _where() -> str:
    """The innermost project line running (what a violation message points at)."""
    import traceback

    frames = [f for f in traceback.extract_stack() if "/src/clipdistill/" in f.filename]
    return f" ({frames[-1].filename.split('/src/')[-1]}:{frames[-1].lineno})" if frames else ""


class SimulatedDevice(TorchFunctionMode):
    """A second device on the CPU. There is no GPU here and a stage that forgets `.to(device)`
    still computes correctly on the CPU, so a plain run cannot tell. This mode tracks, for
    every tensor, whether it would be on the accelerator: a tensor is *on* it when the stage's
    runtime moved it there (`SimulatedRuntime.batch/module`), when a factory was given a
    `device=` (library code creating tensors next to its inputs), or when every non-scalar
    tensor it was computed from is on it (as CUDA computes: a GPU op on GPU inputs gives a GPU tensor; 0-d CPU tensors
    mix freely; indexing keeps the indexed tensor's device; `.cpu()` brings it back).
    Violations: an op (not in place) whose non-scalar inputs are partly on, partly off the
    device; and, in `Module.__call__`, a parameter or buffer of a module that runs, or a
    non-scalar tensor passed to it, off the device. On CUDA each is a "tensors on different
    devices" error, or a model silently run on the CPU (when nothing at all was moved)."""

    def __init__(self):
        super().__init__()
        self.violations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") or name == "__setitem__":
            return out  # in place: the tensor stays where it is (CUDA copies across devices)
        inputs = _tensors((args, kwargs))
        if name == "cpu":
            on = False
        elif name in ("to", "cuda"):  # `.to(x)` joins x; `.to(device)` cannot say which device it names:
            # it keeps the tensor where it was (open_clip's `model.to("cpu")` must not count as a move)
            on = _on(args[0]) or any(isinstance(a, torch.Tensor) and _on(a) for a in args[1:])
        elif name == "__getitem__":
            on = _on(args[0])
        elif big := [t for t in inputs if t.ndim > 0]:
            on = all(map(_on, big))
            if not on and any(map(_on, big)):
                self.violations.append(f"{name} mixes tensors on and off the device{_where()}")
        elif inputs:
            on = any(map(_on, inputs))
        else:
            on = kwargs.get("device") is not None
        if on:
            for t in _tensors(out):
                try:
                    t._simulated_device = True
                except (AttributeError, RuntimeError):
                    pass
        return out

    def check_call(self, module: torch.nn.Module, args, kwargs) -> None:
        kind = type(module).__name__
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t is not None and not _on(t):
                self.violations.append(f"{kind}.{name} is not on the device{_where()}")
        for t in _tensors((args, kwargs)):
            if t.ndim > 0 and not _on(t):
                self.violations.append(f"{kind} got a {tuple(t.shape)} {t.dtype} input that is not on the device"
                                       f"{_where()}")


class SimulatedRuntime(R.Runtime):
    """The CPU runtime that marks what it moves to the simulated device and unmarks what it
    brings back (copies, as real moves make: on the CPU `.to`/`.cpu` return the same tensor)."""

    def module(self, model):
        model = super().module(model)
        _mark([*model.parameters(), *model.buffers()])
        return model

    def batch(self, value):
        if isinstance(value, torch.Tensor):
            moved = value.clone()
            moved._simulated_device = True
            return moved
        return super().batch(value)

    def host(self, value):
        back = value.clone()  # (the mode marks a copy of a marked tensor)
        back._simulated_device = False
        return back


@pytest.fixture
def simulated_device(monkeypatch):
    mode = SimulatedDevice()
    call = torch.nn.Module.__call__

    def checked_call(module, *args, **kwargs):
        mode.check_call(module, args, kwargs)
        return call(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", checked_call)
    with mode:
        yield mode


def _saved_dtypes(root: Path, pattern: str) -> set[str]:
    dtypes = set()
    for path in root.rglob(pattern):
        with safe_open(path, framework="pt") as fh:
            dtypes |= {str(fh.get_slice(k).get_dtype()) for k in fh.keys()}
    return dtypes


def test_every_stage_honours_the_device_and_bf16_keeps_weights_fp32(smoke_data, tmp_path, simulated_device):
    """All model stages (teacher training, features, distillation with store and online
    teacher, CLIP evaluation with CKA, LM pretraining, VLM training, generation, diagnostics)
    in bf16 on the simulated device: nothing left behind, losses finite, weights fp32."""
    root = tiny_pipeline.run_stages(tmp_path, smoke_data, SimulatedRuntime(precision="bf16"))
    assert not simulated_device.violations, sorted(set(simulated_device.violations))[:10]
    for weights in ("teacher", "student_store", "student_online", "lm", "vlm/model"):
        assert _saved_dtypes(root / weights, "*.safetensors") == {"F32"}, weights
    assert _saved_dtypes(root / "features", "shard-*.safetensors") >= {"F16"}  # features.dtype: float16
    for log in root.rglob("train_log.csv"):
        losses = [float(row.split(",")[i]) for header, *rows in [log.read_text().splitlines()]
                  for i in [header.split(",").index("loss")] for row in rows]
        assert losses and all(map(torch.isfinite, torch.tensor(losses))), log
    assert json.loads((root / "metrics_eval.json").read_text())["summary"]


class ForgetsBatches(SimulatedRuntime):
    def batch(self, value):
        return value  # as a stage that never moves its batches


class ForgetsModels(SimulatedRuntime):
    def module(self, model):
        return model  # as a stage that never moves its models


@pytest.fixture(scope="module")
def smoke_teacher(smoke_data, tmp_path_factory):
    from clipdistill.teachers.stage import run as train_teacher

    out = tmp_path_factory.mktemp("runtime") / "teacher"
    train_teacher(load_section(SMOKE, "teachers"), "s", smoke_data, out)
    return out


@pytest.mark.parametrize("forgetful, violation", [(ForgetsBatches, "input that is not on the device"),
                                                  (ForgetsModels, "is not on the device")])
def test_the_device_check_fails_a_stage_that_forgets_a_move(smoke_data, smoke_teacher, tmp_path, simulated_device,
                                                            forgetful, violation):
    """The check itself: CLIP evaluation that leaves its batches (or its models) on the host is
    caught; with the moves it passes."""
    from clipdistill.evaluate.stage import run as eval_clip

    eval_clip(load_section(SMOKE, "eval"), smoke_teacher, tmp_path / "ok.json", smoke_data, runtime=SimulatedRuntime())
    assert not simulated_device.violations
    eval_clip(load_section(SMOKE, "eval"), smoke_teacher, tmp_path / "m.json", smoke_data,
              runtime=forgetful())
    assert any(violation in v for v in simulated_device.violations), simulated_device.violations[:3]


# ------------------------------------------------------------------ mixed precision trains


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_teacher_training_reduces_the_loss(smoke_data, precision, monkeypatch):
    from clipdistill.data.splits import load_split
    from clipdistill.params import TeacherParams
    from clipdistill.teachers.train import train_teacher

    scales = []
    original = torch.amp.GradScaler.update

    def update(scaler, *args):
        scales.append(scaler.get_scale() if scaler.is_enabled() else None)
        return original(scaler, *args)

    monkeypatch.setattr(torch.amp.GradScaler, "update", update)
    spec = TeacherParams(arch="cd-teacher-s", epochs=12, batch_size=20, lr=3e-3)
    model, _, log = train_teacher(spec, load_split(smoke_data / "pretrain"), show_progress=False,
                                  runtime=R.Runtime(precision=precision))
    losses = [row["loss"] for row in log]
    assert all(map(lambda v: v == v and abs(v) < 1e6, losses))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 master weights
    if precision == "fp16":
        assert scales and all(s and s > 1 for s in scales)  # the loss really was scaled
    else:
        assert set(scales) == {None}  # bf16 needs no loss scale: the scaler is a pass-through


def test_the_fp16_loss_scale_is_checkpointed_and_restored(smoke_data, tmp_path, monkeypatch):
    """fp16's dynamic loss scale is training state: a resumed run must go on with the scale the
    interrupted one had reached, not restart from the initial one (it would skip or under-scale
    steps the uninterrupted run took). A disabled scaler (fp32, bf16) adds nothing to the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from clipdistill.data.splits import load_split
    from clipdistill.distill import train as D
    from clipdistill.params import LossOptions, StudentParams, TrainParams

    def distill(checkpoint, precision):
        D.distill(StudentParams(arch="cd-student-xs"), {"clip": LossOptions()},
                  TrainParams(epochs=1, batch_size=8, checkpoint_every=1), 0, load_split(smoke_data / "distill"),
                  D.Teacher(), checkpoint=checkpoint, show_progress=False, runtime=R.Runtime(precision=precision))
        with safe_open(checkpoint, framework="pt") as fh:
            return json.loads(fh.metadata()["state"])

    assert "scaler" not in distill(tmp_path / "fp32.safetensors", "fp32")
    ckpt = tmp_path / "fp16.safetensors"
    meta = distill(ckpt, "fp16")
    assert meta["scaler"]["scale"] == 2.0 ** 16  # torch's initial scale: no overflow in 3 steps
    # the run interrupted one step before its end, at a scale the initial one is not
    meta.update(step=meta["step"] - 1, log=meta["log"][:-1], scaler={**meta["scaler"], "scale": 1024.0})
    save_file(load_file(ckpt), ckpt, metadata={"state": json.dumps(meta)})
    restored = []
    real = D.load_checkpoint

    def spy(path, modules, opt, sched, scaler=None):
        out = real(path, modules, opt, sched, scaler)
        restored.append(scaler.get_scale() if scaler is not None else None)
        return out

    monkeypatch.setattr(D, "load_checkpoint", spy)
    distill(ckpt, "fp16")
    assert restored == [1024.0]


def test_autocast_really_computes_in_16_bit():
    x, w = torch.randn(4, 8), torch.nn.Linear(8, 2)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with R.Runtime(precision=precision).autocast():
            assert w(x).dtype == dtype


def test_compile_and_gradient_checkpointing_options_reach_the_towers():
    """`compile` compiles both open_clip towers in place (the saved weights' names do not change);
    `grad_checkpointing` is set for training only. (Compiling is not run here: slow on a CPU.)"""
    from clipdistill.models import create_model

    plain = create_model("cd-student-xs", 0)
    names = list(plain.state_dict())
    assert R.CPU.towers(plain, train=True) is plain and plain.visual._compiled_call_impl is None
    assert not plain.visual.transformer.grad_checkpointing
    rt = R.Runtime(compile=True, grad_checkpointing=True)
    model = rt.towers(create_model("cd-student-xs", 0), train=True)
    assert model.visual._compiled_call_impl is not None and model.transformer._compiled_call_impl is not None
    assert model.visual.transformer.grad_checkpointing and list(model.state_dict()) == names
    assert not rt.towers(create_model("cd-student-xs", 0), train=False).visual.transformer.grad_checkpointing


# ------------------------------------------------------------------ devices, ranks, bad input


def test_device_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert R.resolve_device("auto") == R.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(R.DeviceUnavailable, match="runtime.device is cuda but this machine has no CUDA"):
        R.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's rank on this node: its own GPU
    assert R.resolve_device("cuda") == R.resolve_device("auto") == torch.device("cuda", 3)
    assert R.resolve_device("cpu") == torch.device("cpu")  # a CPU stage stays there on a GPU machine


@pytest.mark.parametrize("device, backend", [("cuda", "nccl"), ("cpu", "gloo")])
def test_process_group_backend_follows_the_stage_device(monkeypatch, device, backend):
    import torch.distributed as dist

    from clipdistill.training import parallel

    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kw: seen.append(name))
    monkeypatch.setattr(parallel, "rank_and_world", lambda: (0, 2))
    parallel.init_from_env(torch.device(device, 0) if device == "cuda" else torch.device(device))
    assert seen == [backend]


def test_runtime_params_are_validated_with_one_line_errors(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"runtime": {"device": "tpu", "precision": "fp8"}}))
    with pytest.raises(ParamsError) as err:
        load_section(params, "runtime")
    assert "\n" not in str(err.value) and "runtime.device" in str(err.value) and "runtime.precision" in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_exit_2_before_any_work(tmp_path):
    params = yaml.safe_load(SMOKE.read_text())
    params["runtime"]["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (["teacher", "train", "--name", "s", "--data", tmp_path / "no-data", "--out", tmp_path / "t"],
                 ["vqa", "lm", "--train", tmp_path / "no-data", "--out", tmp_path / "lm"]):
        proc = run_cli(*args, "--params", tmp_path / "params.yaml")
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            "clipdistill: error: runtime.device is cuda but this machine has no CUDA device "
            "(torch.cuda.is_available() is False); set runtime.device: cpu or auto"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written, no data read


def test_several_gpus_relaunch_a_data_parallel_stage_under_torchrun(monkeypatch):
    """runtime.gpus > 1: `distill` / `vqa run` rerun their own command line under torchrun, one
    rank per GPU of the job (SLURM's allocation); a rank (LOCAL_RANK set) runs the stage itself."""
    from pydantic import ValidationError

    command = ["/venv/bin/clipdistill", "--log", "x.log", "distill", "--seed", "0"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    argv = R.torchrun_argv(RuntimeParams(device="cuda", gpus=4), command)
    assert argv[0].endswith("torchrun") and argv[1:] == ["--standalone", "--nproc_per_node=4", "--no-python", *command]
    assert R.torchrun_argv(RuntimeParams(device="cuda"), command) is None  # one GPU: no relaunch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(R.DeviceUnavailable, match="runtime.gpus is 4 but this job sees 2 GPU"):
        R.torchrun_argv(RuntimeParams(device="cuda", gpus=4), command)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert R.torchrun_argv(RuntimeParams(device="cuda", gpus=4), command) is None
    with pytest.raises(ValidationError, match="needs device: cuda"):
        RuntimeParams(device="auto", gpus=2)


# ------------------------------------------------------------------ bf16 through both runners


@pytest.mark.slow
def test_bf16_smoke_study_runs_through_snakemake_and_dvc(bf16_study):
    """The whole smoke study with `runtime.precision: bf16` on the CPU, every stage run once and
    split between the runners so that each runs real training in bf16: Snakemake trains and
    evaluates every teacher and student (`clipdistill sync` records them in dvc.lock), then
    `dvc repro` runs every VQA stage and the report on top. Both end with nothing to do, every
    saved weight is fp32 and every metric finite. (The runs: conftest's bf16_study, built in
    the background.)"""
    from studies import dvc_stale, nothing_to_do

    root, home, recorded, repro = (bf16_study[k] for k in ("root", "home", "recorded", "repro"))
    assert not bf16_study["vqa_by_snakemake"]  # Snakemake left every VQA stage to DVC
    ran = set(re.findall(r"^Running stage '([^']+)'", repro.stdout, re.MULTILINE))
    assert ran and all(name.startswith(("vqa_", "report")) for name in ran), sorted(ran)
    assert not ran & recorded  # nothing Snakemake made was redone
    assert dvc_stale(root, home) == set() and nothing_to_do(root, home)
    for weights in ("results/teachers", "results/students", "results/vqa"):
        assert _saved_dtypes(root / weights, "*.safetensors") == {"F32"}, weights
    metrics = [json.loads(p.read_text()) for p in (root / "results").rglob("metrics.json")]
    metrics += [json.loads(p.read_text()) for p in (root / "results" / "vqa_metrics").rglob("vlm*.json")]
    assert len(metrics) >= 10
    numbers = [v for m in metrics for v in _numbers(m)]
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert (root / "results" / "report" / "study.md").is_file()


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield float(tree)


def test_loss_backend_param_decides_what_auto_means_in_the_training_stages(smoke_data, monkeypatch):
    """runtime.loss_backend forces the losses' implementation (auto: Triton for CUDA tensors);
    an explicit backend argument still wins. Teacher training really computes through it."""
    from clipdistill.data.splits import load_split
    from clipdistill.losses import dispatch
    from clipdistill.params import TeacherParams
    from clipdistill.teachers.train import train_teacher

    x = torch.randn(3, 4)
    assert dispatch.resolve_backend("auto", x) == "torch"
    with dispatch.auto_backend("naive"):
        assert dispatch.resolve_backend("auto", x) == "naive" and dispatch.resolve_backend("torch", x) == "torch"
    assert dispatch.resolve_backend("auto", x) == "torch"  # the scope ends
    resolved = []
    real = dispatch.resolve_backend
    monkeypatch.setattr(dispatch, "resolve_backend", lambda b, *t: resolved.append(real(b, *t)) or resolved[-1])
    spec = TeacherParams(arch="cd-teacher-s", epochs=1, batch_size=20)
    train_teacher(spec, load_split(smoke_data / "pretrain"), show_progress=False,
                  runtime=R.Runtime(loss_backend="naive"))
    assert resolved == ["naive", "naive"]  # two steps, each through the forced backend
