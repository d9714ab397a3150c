"""Student training: KD pulls the student toward its teacher, mfd really masks, a killed
run resumes to the same bytes, a NaN stops with the step and term named."""

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from clipdistill.data.splits import Split, load_split
from clipdistill.distill import train as D
from clipdistill.evaluate.clip_eval import evaluate_clip
from clipdistill.features.store import FeatureStore, extract
from clipdistill.io import sha256_file
from clipdistill.models import ClipBundle, create_model, load_model_dir
from clipdistill.models.clip import default_tokenizer_spec, preprocess_cfg, tokenizer_from_spec
from clipdistill.params import EvalParams, FeatureParams, LossOptions, StudentParams, TrainParams

from conftest import BIN, teacher_recipe
from fixture_cache import Recipe, materialise

STUDENT = StudentParams(arch="cd-student-xs")
TRAIN = TrainParams(epochs=6, batch_size=32, lr=3e-3, checkpoint_every=5)
BASELINE = {"clip": LossOptions()}
CLIPKD = {"clip": LossOptions(), "crd": LossOptions(), "icl": LossOptions(), "fd": LossOptions(weight=2000)}


STORE = FeatureParams(patch_tokens=True, views=2)
STORE_MODULES = frozenset(f"clipdistill.{n}" for n in ("data.formats", "data.splits", "features", "features.store",
                                                        "io", "models", "models.clip", "models.tokenizer", "params",
                                                        "training.runtime"))


@pytest.fixture(scope="module")
def store_dir(teacher_dir, world, tmp_path_factory, smoke_params):
    """The teacher's features of distill_big (cached across sessions under mutation testing: conftest)."""
    recipe = Recipe("store", STORE_MODULES, STORE.model_dump_json(), (Path(__file__),), (teacher_recipe(smoke_params),))
    return materialise(recipe, tmp_path_factory.mktemp("store") / "s",
                       lambda out: extract(load_model_dir(teacher_dir), load_split(world / "distill_big"), STORE, out))


def bundle(model, tok_spec):
    return ClipBundle(model, tokenizer_from_spec(tok_spec), "cd-student-xs", preprocess_cfg(model), {}, tok_spec)


def test_kd_student_ends_closer_to_its_teacher_than_the_baseline(store_dir, teacher_dir, world):
    split, teacher = load_split(world / "distill_big"), load_model_dir(teacher_dir)
    evals = load_split(world / "clip_eval")
    metrics = {}
    for name, method in (("baseline", BASELINE), ("clipkd", CLIPKD)):
        model, tok, log = D.distill(STUDENT, method, TRAIN, 0, split, D.Teacher(store=FeatureStore(store_dir)),
                                    show_progress=False)
        assert set(log[0]) == {"step", "epoch", "loss", "lr", *method}
        metrics[name] = evaluate_clip(bundle(model, tok), evals, EvalParams(), teacher)
    kd, base = metrics["clipkd"], metrics["baseline"]
    assert kd["cka"]["image"] > base["cka"]["image"] + 0.02, (kd["cka"], base["cka"])
    colour = kd["zeroshot"]["largest_color"]
    assert colour["top1"] > 2 * colour["chance"], colour


def test_every_method_term_trains_a_step(store_dir, teacher_dir, world):
    """Each loss in the zoo runs inside the training loop (store and online teachers)."""
    split = load_split(world / "distill_big")
    one_step = TRAIN.model_copy(update={"epochs": 1, "batch_size": 240})
    method = {n: LossOptions(weight=w) for n, w in (("clip", 1), ("crd", 1), ("fd", 100), ("mfd", 100), ("icl", 1),
                                                     ("gd", 1), ("afd", 1), ("affinity", 1), ("soft_ce", 1),
                                                     ("siglip", 1), ("siglip_kd", 1), ("patch_fd", 1))}
    for source in (D.Teacher(store=FeatureStore(store_dir)), D.Teacher(bundle=load_model_dir(teacher_dir))):
        _, _, log = D.distill(STUDENT, method, one_step.model_copy(update={"use_views": True}), 0, split, source,
                              show_progress=False)
        assert len(log) == 2 and all(torch.isfinite(torch.tensor(v)) for v in log[-1].values())


def test_mfd_really_masks_patches():
    student = create_model("cd-student-xs", 0).eval()
    x = torch.randn(2, 3, 64, 64)
    lengths = []
    hook = student.visual.transformer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    full = student.encode_image(x)
    with D.masked_patches(student.visual, 0.75):
        masked = student.encode_image(x)
    after = student.encode_image(x)
    hook.remove()
    assert lengths == [65, 1 + 16, 65]  # CLS + 64 patches; CLS + 25% of them; restored afterwards
    assert not torch.allclose(full, masked, atol=1e-4) and torch.equal(full, after)
    assert not student.visual.training


def test_nan_loss_stops_with_step_and_term(store_dir, world, monkeypatch):
    import dataclasses

    from clipdistill.losses import registry

    real = registry.LOSSES["crd"]
    calls = {"n": 0}

    def flaky(batch, heads, opts):
        calls["n"] += 1
        return real.term(batch, heads, opts) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setitem(registry.LOSSES, "crd", dataclasses.replace(real, term=flaky))
    with pytest.raises(FloatingPointError, match=r"step 2: loss term 'crd' is nan"):
        D.distill(STUDENT, {"clip": LossOptions(), "crd": LossOptions()}, TRAIN, 0, load_split(world / "distill_big"),
                  D.Teacher(store=FeatureStore(store_dir)), show_progress=False)


def _cli(params, out, world, teacher_dir, store_dir):
    return [str(BIN / "clipdistill"), "distill", "--params", str(params), "--teacher-name", "s", "--student", "xs",
            "--method", "clipkd", "--seed", "3", "--teacher", str(teacher_dir), "--features", str(store_dir),
            "--data", str(world / "distill_big"), "--out", str(out)]


def _ckpt_step(path) -> int:
    """The step a checkpoint holds (0 while none is written yet); written atomically, so never partial."""
    from safetensors import safe_open

    if not path.is_file():
        return 0
    with safe_open(path, framework="pt") as fh:
        return json.loads(fh.metadata()["state"])["step"]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path, world, teacher_dir, store_dir):
    """Every random choice derives from (seed, step), so a run that ignored its checkpoint and
    restarted would give the same bytes too: the run must also say it resumed (step > 0), and a
    tampered checkpoint must change the result."""
    from safetensors.torch import load_file, save_file

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"distill": {
        "students": {"xs": {"arch": "cd-student-xs"}},
        "methods": {"clipkd": {"clip": 1, "crd": 1, "icl": 1, "fd": 2000}},
        "train": {"epochs": 2, "batch_size": 16, "checkpoint_every": 4}}}))
    ref, out = tmp_path / "ref", tmp_path / "run"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(_cli(params, ref, world, teacher_dir, store_dir), check=True, env=env, capture_output=True,
                   timeout=600)
    assert json.loads((ref / "manifest.json").read_text())["resumed_from_step"] == 0
    ckpt = tmp_path / ".run.ckpt" / "last.safetensors"
    proc = subprocess.Popen(_cli(params, out, world, teacher_dir, store_dir), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # kill once the second checkpoint is logged (step 8 of 60): the run is past a checkpoint and mid-way
    while _ckpt_step(ckpt) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)  # polling, not a guess at how long training takes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = _ckpt_step(ckpt)
    assert 8 <= saved < 60, f"the run was killed at checkpoint step {saved}, not mid-run"
    assert not out.exists(), "a killed run left a partial artifact"
    # a copy of the checkpoint with one student tensor nudged: resuming from it must not give ref's bytes
    tampered = load_file(ckpt)
    key = next(k for k in sorted(tampered) if k.startswith("student.visual.conv1"))
    tampered[key] = tampered[key] + 0.01
    from safetensors import safe_open

    with safe_open(ckpt, framework="pt") as fh:
        meta = fh.metadata()
    (tmp_path / ".tampered.ckpt").mkdir()
    save_file(tampered, tmp_path / ".tampered.ckpt" / "last.safetensors", metadata=meta)
    subprocess.run(_cli(params, out, world, teacher_dir, store_dir), check=True, env=env, capture_output=True,
                   timeout=600)
    assert json.loads((out / "manifest.json").read_text())["resumed_from_step"] == saved
    assert sha256_file(out / "model.safetensors") == sha256_file(ref / "model.safetensors")
    assert (out / "train_log.csv").read_bytes() == (ref / "train_log.csv").read_bytes()
    assert not ckpt.parent.exists(), "the checkpoint is removed once the student is saved"
    subprocess.run(_cli(params, tmp_path / "tampered", world, teacher_dir, store_dir), check=True, env=env,
                   capture_output=True, timeout=600)
    assert json.loads((tmp_path / "tampered" / "manifest.json").read_text())["resumed_from_step"] == saved
    assert sha256_file(tmp_path / "tampered" / "model.safetensors") != sha256_file(ref / "model.safetensors")


def test_store_of_other_data_is_refused(tmp_path, world, teacher_dir, store_dir):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"distill": {"students": {"xs": {"arch": "cd-student-xs"}},
                                                  "methods": {"clipkd": {"clip": 1}}}}))
    cmd = _cli(params, tmp_path / "out", world, teacher_dir, store_dir)
    cmd[cmd.index("--data") + 1] = str(world / "distill")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "feature store does not match: data hash" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("clipdistill: error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0]
    assert not (tmp_path / "out").exists()


def _refused(cmd, out, match):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("clipdistill: error:")
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), "a refused run wrote something"


def test_store_of_another_teacher_is_refused(tmp_path, world, teacher_dir, store_dir):
    from clipdistill.models.clip import default_tokenizer_spec, save_model_dir

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"distill": {"students": {"xs": {"arch": "cd-student-xs"}},
                                                  "methods": {"clipkd": {"clip": 1}}}}))
    other = tmp_path / "other_teacher"  # same architecture and data, different weights
    save_model_dir(other, create_model("cd-teacher-s", 1), "cd-teacher-s", default_tokenizer_spec("cd-teacher-s"),
                   {"source": "test"})
    cmd = _cli(params, tmp_path / "out", world, teacher_dir, store_dir)
    cmd[cmd.index("--teacher") + 1] = str(other)
    _refused(cmd, tmp_path / "out", "feature store was made by another teacher")


def test_store_of_other_preprocessing_is_refused(tmp_path, world, teacher_dir, store_dir):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"distill": {"students": {"xs": {"arch": "cd-student-xs"}},
                                                  "methods": {"clipkd": {"clip": 1}}}}))
    store = tmp_path / "store"  # the right teacher and data, but features made with another normalisation
    shutil.copytree(store_dir, store)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["preprocess"]["mean"] = [0.5, 0.5, 0.5]
    (store / "manifest.json").write_text(json.dumps(manifest))
    cmd = _cli(params, tmp_path / "out", world, teacher_dir, store)
    _refused(cmd, tmp_path / "out", "preprocessing differs in ['mean']")


def test_a_duration_multiplies_the_epochs_and_the_step_cap(tmp_path, smoke_data):
    """`distill --duration N` (the grid's durations axis) trains N × distill.train.epochs, and
    N × max_steps where one is set; the manifest records the epochs it trained. N < 1 is one line."""
    from clipdistill.distill.stage import run
    from clipdistill.io import ClipdistillError
    from clipdistill.params import load_section

    from conftest import SMOKE

    spec = load_section(SMOKE, "distill")

    def steps(name, spec, duration) -> int:
        """Training steps of the run (one train_log row each)."""
        run(spec, student="xs", method="baseline", seed=0, data=smoke_data / "distill", out=tmp_path / name,
            duration=duration)
        return len((tmp_path / name / "train_log.csv").read_text().splitlines()) - 1

    assert steps("x2", spec, 2) == 2 * steps("x1", spec, 1) > 0
    capped = spec.model_copy(update={"train": spec.train.model_copy(update={"max_steps": 2})})
    assert steps("cap_x1", capped, 1) == 2 and steps("cap_x3", capped, 3) == 6
    saved = json.loads((tmp_path / "x2" / "manifest.json").read_text())
    assert json.dumps(saved).count(f'"epochs": {2 * spec.train.epochs}') == 1
    with pytest.raises(ClipdistillError, match="--duration 0: a duration is a multiple"):
        run(spec, student="xs", method="baseline", seed=0, data=smoke_data / "distill", out=tmp_path / "x0",
            duration=0)


# ------------------------------------------------------------------ the loop's parts, on toy inputs

def test_batch_rows_draw_each_row_once_per_epoch_and_resume_where_they_stopped():
    # 11 rows in batches of 3: 3 steps an epoch (2 rows left out), 8 steps = 2 epochs and 2 steps
    full = [r.tolist() for r in D.batch_rows(11, 3, seed=5, start=0, total=8)]
    assert [len(r) for r in full] == [3] * 8
    epochs = [[row for batch in full[e * 3:(e + 1) * 3] for row in batch] for e in range(2)]
    assert all(len(set(rows)) == 9 and set(rows) <= set(range(11)) for rows in epochs)
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch
    assert full[6:] != full[:2]
    # a run resumed at step 4 (mid-epoch 1) or 6 (an epoch's start) draws what the whole run drew
    assert [r.tolist() for r in D.batch_rows(11, 3, seed=5, start=4, total=8)] == full[4:]
    assert [r.tolist() for r in D.batch_rows(11, 3, seed=5, start=6, total=8)] == full[6:]
    assert [r.tolist() for r in D.batch_rows(11, 3, seed=6, start=0, total=3)] != full[:3]  # the seed matters
    # two data-parallel ranks split each global batch of 4 in order: rank 0 the first half
    both = [list(D.batch_rows(11, 4, seed=5, start=0, total=5, rank=k, world=2)) for k in (0, 1)]
    whole = list(D.batch_rows(11, 4, seed=5, start=0, total=5))
    assert [torch.cat([a, b]).tolist() for a, b in zip(*both)] == [w.tolist() for w in whole]


def test_step_seeds_differ_by_step_and_by_run_seed():
    seeds = {D._step_seed(s, step) for s in range(4) for step in range(-3, 50)}
    assert len(seeds) == 4 * 53 and all(0 <= s < 2**63 for s in seeds)
    assert D._step_seed(2**62, 7) < 2**63  # wrapped into torch.manual_seed's range


def test_full_precision_casts_only_floating_tensors():
    batch = {"half": torch.ones(2, dtype=torch.bfloat16), "ids": torch.arange(3), "name": "x",
             "single": torch.zeros(1, dtype=torch.float16)}
    out = D.full_precision(batch)
    assert out["half"].dtype == out["single"].dtype == torch.float32
    assert out["ids"].dtype == torch.int64 and out["name"] == "x"


def test_student_batch_gives_unit_embeddings_the_scale_and_penultimate_patch_tokens():
    student = create_model("cd-student-d4", 0).eval()  # 4 blocks: the penultimate is not the first
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer_from_spec(default_tokenizer_spec("cd-student-d4"))(["a red ring", "two", "a blue square"])
    blocks = student.visual.transformer.resblocks
    seen = []
    hook = blocks[len(blocks) - 2].register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        full = D.student_batch(student, x, tokens, {"s_patches", "s_image_masked"}, mask_ratio=0.75)
        plain = D.student_batch(student, x, tokens, set(), mask_ratio=0.75)
    hook.remove()
    for key in ("s_image", "s_text", "s_image_masked"):
        assert torch.allclose(full[key].norm(dim=-1), torch.ones(3), atol=1e-6), key
    assert torch.equal(full["s_scale"], student.logit_scale.exp())
    # LLaVA's layer: the penultimate block's output, CLS dropped (the first forward is the full view)
    assert torch.allclose(full["s_patches"], seen[0][:, 1:], atol=1e-6) and full["s_patches"].shape[1] == 64
    assert torch.allclose(full["s_image"], plain["s_image"], atol=1e-6) and "s_patches" not in plain
    assert not torch.allclose(full["s_image_masked"], full["s_image"], atol=1e-3)  # patches really dropped
    assert "s_image_masked" not in plain


def test_online_teacher_gives_the_targets_its_feature_store_holds(tmp_path):
    """The same rows' targets from the live teacher and from its store (fp32, so equal up to
    rounding): image embedding, caption embedding, penultimate patch tokens; a stored view is
    the one asked for per row."""
    teacher = create_model("cd-teacher-deep", 0).eval()  # 6 blocks: the penultimate is not the first
    spec = default_tokenizer_spec("cd-teacher-deep")
    bundle = ClipBundle(teacher, tokenizer_from_spec(spec), "cd-teacher-deep", preprocess_cfg(teacher),
                        {"weights_sha256": "0" * 64}, spec)
    images = torch.randint(0, 256, (5, 3, 64, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    split = Split(images, ["a red ring", "two blue squares", "a green circle", "one", "three small rings"])
    extract(bundle, split, FeatureParams(dtype="float32", patch_tokens=True, views=2, batch_size=2), tmp_path / "s")
    store = FeatureStore(tmp_path / "s")
    idx = torch.tensor([3, 0, 4])
    needs = {"t_image", "t_text", "t_patches"}
    stored = D.Teacher(store=store).targets(idx, split, needs, None, None)
    live = D.Teacher(bundle=bundle).targets(idx, split, needs, None, None)
    assert stored.keys() == live.keys() == needs
    for key in needs:
        assert torch.allclose(stored[key], live[key], atol=1e-5), key
    assert live["t_patches"].shape == (3, 64, teacher.visual.transformer.width)
    # views: row k's target is its stored view view[k], the same as the live teacher on that crop
    view = torch.tensor([1, 0, 1])
    boxes = store.get("view_boxes", idx)[torch.arange(3), view]
    stored_view = D.Teacher(store=store).targets(idx, split, {"t_image"}, view, boxes)["t_image"]
    live_view = D.Teacher(bundle=bundle).targets(idx, split, {"t_image"}, view, boxes)["t_image"]
    assert torch.allclose(stored_view, live_view, atol=1e-5)
    assert not torch.allclose(stored_view, stored["t_image"], atol=1e-3)
    assert D.Teacher(store=store).targets(idx, split, {"t_text"}, None, None).keys() == {"t_text"}
    assert D.Teacher().targets(idx, split, needs, None, None) == {} and not D.Teacher().present
    assert D.Teacher(bundle=bundle).logit_scale == pytest.approx(teacher.logit_scale.exp().item())


# ------------------------------------------------------------------ the loop itself, on a tiny split

# 12 rows in batches of 4: 3 steps an epoch, 6 steps; a warm-up of int(0.5 · 6) = 3 steps
TINY = TrainParams(epochs=2, batch_size=4, lr=1e-3, weight_decay=0.2, warmup_frac=0.5, checkpoint_every=100)


def tiny_split() -> Split:
    images = torch.randint(0, 256, (12, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return Split(images, [f"{k} red rings" for k in range(12)])


def _checkpoint_state(path) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return json.loads(fh.metadata()["state"])


def test_the_heads_are_not_decayed_and_the_lr_warms_up_then_follows_a_cosine(tmp_path):
    ckpt = tmp_path / "last.safetensors"
    _, _, log = D.distill(STUDENT, {"clip": LossOptions(), "siglip": LossOptions()}, TINY, 0, tiny_split(),
                          D.Teacher(), checkpoint=ckpt, show_progress=False)
    groups = _checkpoint_state(ckpt)["param_groups"]
    # the student's two groups (matrices decayed, the rest not), then the heads: the SigLIP bias alone
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0, 0.0] and len(groups[-1]["params"]) == 1
    assert all(g["betas"] == [0.9, 0.98] and g["eps"] == 1e-6 for g in groups)
    # each row logs the lr of the next step: warm-up (k + 1) / 3 for k < 3, then ½(1 + cos(π (k − 3) / 3))
    factors = [2 / 3, 1.0, 1.0, 0.75, 0.25, 0.0]
    assert [row["lr"] for row in log] == pytest.approx([1e-3 * f for f in factors], abs=1e-12)


def test_no_warm_up_fraction_still_warms_up_over_one_step():
    no_warmup = TINY.model_copy(update={"warmup_frac": 0.0})
    _, _, log = D.distill(STUDENT, BASELINE, no_warmup, 0, tiny_split(), D.Teacher(), show_progress=False)
    # a one-step warm-up: the cosine runs over the 5 steps after it
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(6)]
    assert [row["lr"] for row in log] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("start, clamped", [(5.0, 4.6052), (-0.5, 0.0)])
def test_the_learned_logit_scale_is_clamped_to_at_most_ln_100_and_at_least_0(monkeypatch, start, clamped):
    def student_starting_at(arch, seed):
        model = create_model(arch, seed)
        with torch.no_grad():
            model.logit_scale.fill_(start)
        return model

    monkeypatch.setattr(D, "create_model", student_starting_at)
    one_step = TINY.model_copy(update={"max_steps": 1})  # an AdamW step moves it by about the lr only
    model, _, _ = D.distill(STUDENT, BASELINE, one_step, 0, tiny_split(), D.Teacher(), show_progress=False)
    assert model.logit_scale.item() == pytest.approx(clamped, abs=1e-6)


def test_views_are_cropped_only_when_the_params_ask(monkeypatch):
    boxes_seen = []
    targets = D.Teacher.targets

    def recording(self, idx, split, needs, view, boxes, runtime=D.CPU):
        boxes_seen.append(boxes)
        return targets(self, idx, split, needs, view, boxes, runtime)

    monkeypatch.setattr(D.Teacher, "targets", recording)
    D.distill(STUDENT, BASELINE, TINY, 0, tiny_split(), D.Teacher(), show_progress=False)
    assert boxes_seen == [None] * 6
    boxes_seen.clear()
    D.distill(STUDENT, BASELINE, TINY.model_copy(update={"use_views": True}), 0, tiny_split(), D.Teacher(),
              show_progress=False)
    assert len(boxes_seen) == 6 and all(b.shape == (4, 4) for b in boxes_seen)
    assert not torch.equal(boxes_seen[0], boxes_seen[1])  # fresh crops each step


def test_the_progress_bar_shows_only_when_asked(capsys):
    D.distill(STUDENT, BASELINE, TINY, 0, tiny_split(), D.Teacher(), show_progress=False)
    assert capsys.readouterr().err == ""
    D.distill(STUDENT, BASELINE, TINY, 0, tiny_split(), D.Teacher(), show_progress=True)
    err = capsys.readouterr().err
    assert "distill cd-student-xs" in err and "6/6" in err and "step/s" in err, err


def test_an_fp16_runs_checkpoint_carries_its_loss_scale(tmp_path):
    from clipdistill.training.runtime import Runtime

    class ScaledRuntime(Runtime):
        """fp32 compute with an enabled loss scaler (what fp16 uses), so the CPU can run it."""

        def grad_scaler(self):
            return torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True)

    ckpt = tmp_path / "last.safetensors"
    D.distill(STUDENT, BASELINE, TINY, 0, tiny_split(), D.Teacher(), checkpoint=ckpt, show_progress=False,
              runtime=ScaledRuntime())
    assert _checkpoint_state(ckpt)["scaler"]["scale"] == 2.0**10


@pytest.mark.parametrize("rank", [0, 1])
def test_each_data_parallel_rank_gathers_the_global_batch_with_its_rank_and_averages_over_the_world(monkeypatch,
                                                                                                     rank):
    """Two ranks simulated in one process (torch.distributed is not started; the collectives
    recorded): each step trains on this rank's half of the batch, gathers the global batch
    naming its own rank, and averages the gradients and the loss over the world of 2."""
    calls = {"gather": [], "average": [], "mean": 0}

    def gather(batch, this_rank):
        calls["gather"].append((this_rank, len(batch["s_image"])))
        return batch

    def mean(value):
        calls["mean"] += 1
        return value

    monkeypatch.setattr(D.parallel, "rank_and_world", lambda: (rank, 2))
    monkeypatch.setattr(D.parallel, "gather_batch", gather)
    monkeypatch.setattr(D.parallel, "average_gradients", lambda params, world: calls["average"].append(world))
    monkeypatch.setattr(D.parallel, "mean_over_ranks", mean)
    two_steps = TINY.model_copy(update={"max_steps": 2})
    D.distill(STUDENT, BASELINE, two_steps, 0, tiny_split(), D.Teacher(), show_progress=False)
    assert calls["gather"] == [(rank, 2)] * 2  # half of the 4-row batch, gathered as this rank's
    assert calls["average"] == [2, 2] and calls["mean"] == 2 * (1 + len(BASELINE))  # the loss and each term
