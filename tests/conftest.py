import os

# Triton kernels run in the interpreter on CPU; must be set before any kernel import.
# CLIPDISTILL_GPU_TESTS=1 (make gpu-kernels) leaves it off so they run on the GPU.
if os.environ.get("CLIPDISTILL_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from background_queue import BackgroundQueue, consumers_last  # noqa: E402
from fixture_cache import Recipe, materialise, stats_run_durations  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
BIN = Path(sys.executable).parent


def synth_world(params, root: Path, splits=None) -> Path:
    """The named splits of `params` (all by default), each under root/<split>."""
    from clipdistill.data.synth import synthesize

    for split in splits or params.splits:
        synthesize(params, split, root / split)
    return root


def train_small_teacher(pretrain: Path, out: Path, epochs: int) -> Path:
    """A cd-teacher-s trained by the pipeline's own code on the `pretrain` split, saved to out."""
    from clipdistill.data.splits import load_split
    from clipdistill.params import TeacherParams
    from clipdistill.teachers import train as T

    spec = TeacherParams(arch="cd-teacher-s", epochs=epochs, batch_size=64, lr=3e-3)
    split = load_split(pretrain)
    model, tok, log = T.train_teacher(spec, split, show_progress=False)
    T.save_pipeline_teacher(out, "s", spec, split, model, tok, log)
    return out


@pytest.fixture(scope="session")
def smoke_params():
    from clipdistill.params import load_section

    return load_section(SMOKE, "data")


# The clipdistill modules whose code builds each cached fixture (tests/fixture_cache.py: on
# only under mutation testing; a stored build checks that it ran no other module's code).
def _modules(*names: str) -> frozenset[str]:
    return frozenset(f"clipdistill.{n}" for n in names)


WORLD_MODULES = _modules("data", "data.formats", "data.render", "data.synth", "data.world", "io", "params")
TEACHER_MODULES = _modules("data", "data.formats", "data.splits", "data.world", "io", "kernels", "losses",
                           "losses.contrastive", "losses.dispatch", "losses.distributed", "losses.region",
                           "losses.registry", "losses.siglip", "losses.similarity_kd", "losses.zoo", "models",
                           "models.clip", "models.tokenizer", "params", "teachers", "teachers.train", "training",
                           "training.loop", "training.runtime")


def world_recipe(name: str, params, splits=None) -> Recipe:
    return Recipe(name, WORLD_MODULES, f"{params.model_dump_json()} {splits}", (Path(__file__),))


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory, smoke_params):
    """The smoke synthetic world, generated once per test session."""
    return materialise(world_recipe("smoke_data", smoke_params), tmp_path_factory.mktemp("world") / "data",
                       lambda dest: synth_world(smoke_params, dest))


def run_cli(*args, cwd=None, check=False, timeout=300, env=None):
    """Run the installed `clipdistill` console script (`env`: extra environment variables)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
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


WORLD_SPLITS = ("pretrain", "clip_eval", "distill", "distill_big", "vqa_train", "vqa_eval")


def world_params(smoke_params):
    """A world big enough to learn from: 1200 pretraining scenes, 480 to distil on, 200 to evaluate."""
    from clipdistill.params import SplitParams

    return smoke_params.model_copy(update={"splits": {**smoke_params.splits,
                                                      "pretrain": SplitParams(size=1200),
                                                      "clip_eval": SplitParams(size=200),
                                                      "distill_big": SplitParams(size=480),
                                                      "vqa_train": SplitParams(size=600),
                                                      "vqa_eval": SplitParams(size=120)}})


def teacher_recipe(smoke_params, epochs: int = 6) -> Recipe:
    """The `teacher_dir` fixture's recipe (its world upstream): test files' fixtures built from it name it."""
    world = world_recipe("world", world_params(smoke_params), WORLD_SPLITS)
    return Recipe("teacher", TEACHER_MODULES, f"epochs={epochs}", (Path(__file__),), (world,))


@pytest.fixture(scope="session")
def world(tmp_path_factory, smoke_params):
    """A world big enough to learn from (world_params)."""
    params = world_params(smoke_params)
    return materialise(world_recipe("world", params, WORLD_SPLITS), tmp_path_factory.mktemp("teacher_world"),
                       lambda dest: synth_world(params, dest, WORLD_SPLITS))


@pytest.fixture(scope="session")
def teacher_dir(world, tmp_path_factory, smoke_params):
    return materialise(teacher_recipe(smoke_params), tmp_path_factory.mktemp("teachers") / "s",
                       lambda dest: train_small_teacher(world / "pretrain", dest, epochs=6))


# The shared smoke studies (tests/studies.py): each is built once per session, on first use.

@pytest.fixture(scope="session")
def home(tmp_path_factory):
    """HOME (and DVC's site cache) for the end-to-end tests: one, as the shared studies are."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def snakemake_killed(snakemake_chain):
    """The states right after a SIGKILL and `clipdistill sync`: see studies.snakemake_killed."""
    return snakemake_chain[0]


@pytest.fixture(scope="session")
def snakemake_study(snakemake_chain):
    """Finished by Snakemake (after the kill), dvc-committed, dvc.lock in git: read it, or copy it."""
    return snakemake_chain[1]


@pytest.fixture(scope="session")
def snakemake_experiment(snakemake_chain):
    """The one-param experiment on a copy of snakemake_study: see studies.one_param_experiment."""
    return snakemake_chain[2]


# Long chains of one-thread stages run one at a time (`dvc repro`, `dvc exp run`; the Snakemake
# study killed and resumed; the bf16 study's VQA half; the worked example's two runners) and the
# one-object world's teacher leave
# one of CI's two cores idle. Those the session's selected tests need are built one after another
# in a background thread from the first test on, beside the other tests (issue 23); each fixture
# waits for its own, and the summary says how long. Fixture name -> (the job in tests/studies.py,
# the fixtures that need it, the fixture that reads the job's optional experiment or None), in
# queue order: the modules that use them run last, in the same order (pytest_collection_modifyitems).
BACKGROUND = {"one_object_world": ("one_object_world", {"one_object_world"}, None),
              "snakemake_chain": ("snakemake_killed_finished_experiment",
                                  {"snakemake_chain", "snakemake_killed", "snakemake_study", "snakemake_experiment"},
                                  "snakemake_experiment"),
              "dvc_study_and_experiment": ("dvc_reproduced_with_experiment", {"dvc_study", "dvc_study_and_experiment"},
                                           "dvc_study_and_experiment"),
              "bf16_study": ("bf16_study", {"bf16_study"}, None),
              "worked_example": ("worked_example", {"worked_example"}, None)}
NEEDED = pytest.StashKey[set]()
QUEUE = pytest.StashKey[BackgroundQueue]()


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(items):
    """Under mutation testing (fixture cache on): the fastest tests first, so a mutant that a quick
    test kills (mutmut runs -x) stops before the trainings. Otherwise the modules that wait on a
    background job run as late as possible, so that the foreground rarely waits: after all others,
    in queue order (so the first job is the first needed). Verdicts do not depend on the order."""
    if durations := stats_run_durations():
        items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
    else:
        items[:] = consumers_last(items, [users for _, users, _ in BACKGROUND.values()])


def pytest_collection_finish(session):
    used = set().union(*(item.fixturenames for item in session.items)) if session.items else set()
    session.config.stash[NEEDED] = used


def _background_job(name: str, used: set, tmp_path_factory, home: Path):
    """The call that builds fixture `name`; a study's experiment runs only if a selected test reads it."""
    import studies

    builder, _, experiment = BACKGROUND[name]
    if experiment is None:
        return partial(getattr(studies, builder), tmp_path_factory.mktemp(name))
    return partial(getattr(studies, builder), tmp_path_factory.mktemp(name), home, experiment=experiment in used)


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """The queue building the BACKGROUND fixtures the session's selected tests need (None if none)."""
    used = request.config.stash.get(NEEDED, set())
    names = [name for name, (_, users, _) in BACKGROUND.items() if users & used]
    if not names:
        yield None
        return
    home = request.getfixturevalue("home")
    queue = request.config.stash[QUEUE] = BackgroundQueue()
    for name in names:
        queue.submit(name, _background_job(name, used, tmp_path_factory, home))
    yield queue
    queue.close()


def pytest_unconfigure(config):
    if QUEUE in config.stash:  # also after Ctrl-C, when fixtures may not be torn down
        config.stash[QUEUE].close()


def pytest_terminal_summary(terminalreporter, config):
    if QUEUE in config.stash:
        terminalreporter.section("background jobs (seconds from the first test)")
        for line in config.stash[QUEUE].summary():
            terminalreporter.write_line(line)


def _built(request, name: str):
    queue = request.getfixturevalue("background")
    if queue is not None and name in queue.futures:
        return queue.result(name, request.fixturename)
    return _background_job(name, request.config.stash.get(NEEDED, {name}), request.getfixturevalue("tmp_path_factory"),
                           request.getfixturevalue("home"))()


@pytest.fixture(scope="session")
def snakemake_chain(request):
    """(killed, finished, the experiment or None): see studies.snakemake_killed_finished_experiment."""
    return _built(request, "snakemake_chain")


@pytest.fixture(scope="session")
def dvc_study_and_experiment(request):
    """(the study, the clipkd experiment run on a copy of it): see studies.dvc_reproduced_with_experiment."""
    return _built(request, "dvc_study_and_experiment")


@pytest.fixture(scope="session")
def dvc_study(dvc_study_and_experiment):
    """Made by `dvc repro` in a fresh clone, dvc.lock in git: read it, or copy it."""
    return dvc_study_and_experiment[0]


@pytest.fixture(scope="session")
def bf16_study(request):
    """The smoke study in bf16, split between the runners: see studies.bf16_study."""
    return _built(request, "bf16_study")


@pytest.fixture(scope="session")
def worked_example(request):
    """configs/example-real.yaml run by both runners: see studies.worked_example."""
    return _built(request, "worked_example")


@pytest.fixture(scope="session")
def one_object_world(request):
    """test_vqa's one-object world and its teacher: see tests/helpers/one_object_world.py."""
    return _built(request, "one_object_world")
