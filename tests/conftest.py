import os

# Triton kernels run in the interpreter on CPU; must be set before any kernel import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def smoke_params():
    from clipdistill.params import load_section

    return load_section(SMOKE, "data")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory, smoke_params):
    """The smoke synthetic world, generated once per test session."""
    from clipdistill.data.synth import synthesize

    out = tmp_path_factory.mktemp("world") / "data"
    for split in smoke_params.splits:
        synthesize(smoke_params, split, out / split)
    return out


def run_cli(*args, cwd=None, check=False, timeout=300):
    """Run the installed `clipdistill` console script."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "clipdistill"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"clipdistill {args} failed:\n{proc.stderr}")
    return proc


def project_copy(dest: Path, params: Path = SMOKE) -> Path:
    """A git-initialised copy of the tracked project with `params` as params.yaml."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shutil.copy2(params, dest / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def world(tmp_path_factory, smoke_params):
    """A world big enough to learn from: 1200 pretraining scenes, 480 to distil on, 200 to evaluate."""
    from clipdistill.data.synth import synthesize
    from clipdistill.params import SplitParams

    params = smoke_params.model_copy(update={"splits": {**smoke_params.splits,
                                                        "pretrain": SplitParams(size=1200),
                                                        "clip_eval": SplitParams(size=200),
                                                        "distill_big": SplitParams(size=480),
                                                        "vqa_train": SplitParams(size=600),
                                                        "vqa_eval": SplitParams(size=120)}})
    root = tmp_path_factory.mktemp("teacher_world")
    for split in ("pretrain", "clip_eval", "distill", "distill_big", "vqa_train", "vqa_eval"):
        synthesize(params, split, root / split)
    return root


@pytest.fixture(scope="session")
def teacher_dir(world, tmp_path_factory):
    from clipdistill.data.splits import load_split
    from clipdistill.params import TeacherParams
    from clipdistill.teachers import train as T

    spec = TeacherParams(arch="cd-teacher-s", epochs=6, batch_size=64, lr=3e-3)
    split = load_split(world / "pretrain")
    model, tok, log = T.train_teacher(spec, split, show_progress=False)
    out = tmp_path_factory.mktemp("teachers") / "s"
    T.save_pipeline_teacher(out, "s", spec, split, model, tok, log)
    return out
