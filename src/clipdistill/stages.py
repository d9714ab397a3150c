"""The stage table: every pipeline stage once — its command, inputs, outputs, params and code.

The Snakemake rules (workflow/rules/*.smk), dvc.yaml (generated: `python -m clipdistill.stages
dvc-yaml --out dvc.yaml`; tests/test_dag.py fails when the committed file differs) and the
report's readers of results/ all come from here.

Paths are templates. `{teacher}`-style placeholders are grid axes (Snakemake wildcards, DVC
`${item.teacher}` / `${key}`); dotted ones such as `{eval.split}` are params values
(DVC `${eval.split}`). A stage runs over one or more grids: the teacher-free baselines are
the same stage on a grid whose teacher is `none`, where the parts marked `Teacher(...)` are
left out of the command and the inputs.

Code dependencies are computed, never listed: the CLI layer (what importing cli.py runs),
the modules the stage's command imports in its body (its entry modules, found through the
CLI's own command tree), and everything those import, transitively (`codedeps`). The
Snakefile imports this module from src/ to build its rules.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from clipdistill import codedeps

PARAMS_FILE = "params.yaml"
REPO = codedeps.SRC.parent  # where dvc.yaml, the Snakefile and params.yaml live
CLI = "clipdistill.cli"
PARAMS_MODULE = "clipdistill.params"
NO_TEACHER = "none"  # the teacher of a teacher-free (no-KD) baseline run


class Teacher(str):
    """A command fragment or input that exists only in runs with a teacher."""


@dataclass(frozen=True)
class Out:
    path: str
    directory: bool = False
    metrics: bool = False  # a JSON of numbers: DVC `metrics:` (cached like every output)


@dataclass(frozen=True)
class Upstream:
    """Every output of another stage (the report reads them all): Snakemake lists each file,
    DVC names the folders they live in."""

    stage: str


@dataclass(frozen=True)
class EachEvalSet:
    """A path per further VQA evaluation set (`{eval_set}` over vqa.eval_splits[1:]): Snakemake
    lists each, dvc.yaml each literally (it is regenerated when vqa.eval_splits changes)."""

    path: str


@dataclass(frozen=True)
class Sources:
    """The files an imported split reads (its params entry names them: `data.splits.{split}`),
    none for a synthetic split. Snakemake lists them from the config; dvc.yaml lists them
    literally, so it is regenerated when data.splits changes."""

    split: str


@dataclass(frozen=True)
class ExternalFiles:
    """Files outside the project's results that params point a run at: an external teacher's
    local checkpoint or `local-dir:` folder (`teacher`: of the run's teacher), a local language
    model (`lm`: vqa.lm.path). Snakemake lists them (a folder's files) from the config; dvc.yaml
    lists them literally, so it is regenerated when those params change."""

    of: str  # "teacher" | "lm"


@dataclass(frozen=True)
class Grid:
    """The runs of a stage: each axis takes the items (or keys) of a params list (or dict);
    `fixed` binds a placeholder to a value or to another axis (`{teacher}`)."""

    axes: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    dvc_name: str = "{stage}"  # one DVC stage per grid; teacher-free grids keep their historic names
    dvc_matrix: bool = False  # a DVC matrix even with one axis: foreach's ${key} needs a dict, this axis is a list

    @property
    def teacher_free(self) -> bool:
        return self.fixed.get("teacher") == NO_TEACHER or self.fixed.get("kd_teacher") == NO_TEACHER


@dataclass(frozen=True)
class Stage:
    name: str  # the Snakemake rule; the DVC stage (plus a grid's suffix)
    command: tuple  # `clipdistill` arguments after `--log LOG`, in fragments
    inputs: tuple  # data and results it reads (paths, Teacher(path), Upstream(stage))
    outputs: tuple[Out, ...]
    params: tuple[str, ...]  # params keys it reads; `data.*` = every data key not named otherwise
    log: str
    grids: tuple[Grid, ...] = (Grid(),)

    def placeholders(self) -> set[str]:
        return {p for grid in self.grids for p in (*grid.axes, *grid.fixed)}


# The distillation regime: the split students distil on and the duration (× distill.train.epochs).
# Every trained student and what is made from it lives under results/<stage>/<data>-x<duration>/,
# and its DVC stage name starts with the two (`distill@distill-1-s-xs-crd-0`).
REGIME_AXES = {"data": "distill.grid.data", "duration": "distill.grid.durations"}
REGIME = "{data}-x{duration}"


def _runs(kd_methods: bool, teacher: str = "distill.grid.teachers") -> dict[str, str]:
    return {**REGIME_AXES, "teacher": teacher, "student": "distill.grid.students",
            "method": "distill.grid.methods" if kd_methods else "distill.grid.baselines", "seed": "distill.grid.seeds"}


STUDENT_AXES = {k: v for k, v in _runs(False).items() if k != "teacher"}
KD = Grid(_runs(True))
BASELINE = Grid(STUDENT_AXES, {"teacher": NO_TEACHER}, dvc_name="{stage}_baseline")
RUN = REGIME + "/{teacher}/{student}/{method}/{seed}"
RUN_KEYS = ("data", "duration", "teacher", "student", "method", "seed")  # a run's placeholders, in folder order
# Every encoder gets one VLM per VLM seed (`vqa.seeds`), in a folder `vlm<seed>` under the encoder's.
VLM_AXIS = {"vlm_seed": "vqa.seeds"}
TRAINED = REGIME + "/{kd_teacher}/{student}/{method}/{seed}"  # the student a student_eval run scores
VLM = "vlm{vlm_seed}"
# The VQA splits (vqa.train_split, vqa.eval_splits): `vqa run` trains each VLM on TRAIN and scores it
# on the first evaluation set, the study's (results/vqa_metrics/...); `vqa score` scores the saved
# VLM on every further set (EVAL_SET, an axis over the list after its first entry), under
# results/vqa_sets/<set>/ in the same layout. Adding a set reruns only the new scoring jobs (and the report).
TRAIN, FIRST_EVAL = "results/data/{vqa.train_split}", "results/data/{vqa.eval_splits.0}"
EVAL_SET_AXIS = {"eval_set": "vqa.eval_splits[1:]"}
VQA_RUN_PARAMS = ("vqa.*", "-vqa.eval_splits", "runtime")  # not the further sets: they train nothing
# `eval clip`'s keys: not eval.harnesses, so switching a harness on reruns no CLIP evaluation
CLIP_EVAL = ("eval.split", "eval.batch_size", "eval.recall_at", "runtime")


def _harness(name: str, grid: Grid) -> Grid:
    """A grid's runs once per split the harness scores on (eval.harnesses.NAME): none while the
    list is empty, in both runners (an empty DVC matrix axis makes no stages)."""
    return Grid({"split": f"eval.harnesses.{name}", **grid.axes}, grid.fixed, grid.dvc_name, dvc_matrix=True)


def _lmms(name: str, vlms: str, grids: tuple[Grid, ...]) -> Stage:
    """lmms-eval on a kind of VLM (`vqa run`'s folders results/vqa/VLMS) per harness split."""
    out = f"results/harness/lmms/{{split}}/{vlms}"
    return Stage(f"harness_lmms_{name}",
                 (f"eval lmms --params params.yaml --model results/vqa/{vlms} --data results/data/{{split}}"
                  f" --out {out}",),
                 inputs=(f"results/vqa/{vlms}", "results/data/{split}"), outputs=(Out(out, directory=True),),
                 params=("vqa.max_new_tokens",), log=f"logs/harness/lmms/{{split}}/{vlms}.log",
                 grids=tuple(_harness("lmms", g) for g in grids))


def _mieb(name: str, encoders: str, grids: tuple[Grid, ...]) -> Stage:
    """mteb (MIEB) on a kind of encoder (model folders results/ENCODERS) per harness split."""
    out = f"results/harness/mieb/{{split}}/{encoders}.json"
    return Stage(f"harness_mieb_{name}",
                 (f"eval mieb --params params.yaml --model results/{encoders} --data results/data --split {{split}}"
                  f" --out {out}",),
                 inputs=(f"results/{encoders}", "results/data/{split}"), outputs=(Out(out, metrics=True),),
                 params=("eval.batch_size",), log=f"logs/harness/mieb/{{split}}/{encoders}.log",
                 grids=tuple(_harness("mieb", g) for g in grids))


def _score(name: str, vlms: str, grids: tuple[Grid, ...], blind: bool = False) -> Stage:
    """`vqa score` of a kind of VLM (`vqa run`'s folders results/vqa/VLMS) on each further evaluation set."""
    out, metrics = f"results/vqa_sets/{{eval_set}}/vqa/{vlms}", f"results/vqa_sets/{{eval_set}}/vqa_metrics/{vlms}.json"
    return Stage(f"vqa_score_{name}",
                 (f"vqa score --params params.yaml --vlm results/vqa/{vlms}{' --blind' if blind else ''}"
                  f" --eval results/data/{{eval_set}} --out {out} --metrics {metrics}",),
                 inputs=(f"results/vqa/{vlms}", "results/data/{eval_set}"),
                 outputs=(Out(out, directory=True), Out(metrics, metrics=True)),
                 params=("vqa.eval_batch_size", "vqa.max_new_tokens", "runtime"),
                 log=f"logs/vqa_sets/{{eval_set}}/{vlms}.log",
                 grids=tuple(Grid({**EVAL_SET_AXIS, **g.axes}, g.fixed, g.dvc_name, dvc_matrix=True) for g in grids))


STAGES: tuple[Stage, ...] = (
    # An imported split reads its own params entry only: the synthetic world's keys (data.*) do not touch it.
    Stage("data_prepare", ("data prepare --params params.yaml --split {split} --out results/data/{split}",),
          inputs=(Sources("{split}"),), outputs=(Out("results/data/{split}", directory=True),),
          params=("data.*", "data.splits.{split}"), log="logs/data_prepare/{split}.log",
          grids=(Grid({"split": "data.splits"}),)),
    # The study's own splits, named by params: its first VQA evaluation set and its first distillation split.
    Stage("data_preview", ("data preview --data results/data --split {vqa.eval_splits.0} --split {distill.grid.data.0}"
                           " --n 6 --out results/preview/scenes.png",),
          inputs=(FIRST_EVAL, "results/data/{distill.grid.data.0}"),
          outputs=(Out("results/preview/scenes.png"),), params=(), log="logs/data_preview.log"),
    Stage("teacher_train", ("teacher train --params params.yaml --name {teacher} --data results/data"
                            " --out results/teachers/{teacher}",),
          inputs=("results/data/pretrain", ExternalFiles("teacher")),
          outputs=(Out("results/teachers/{teacher}", directory=True),),
          params=("teachers.{teacher}", "runtime"), log="logs/teacher_train/{teacher}.log",
          grids=(Grid({"teacher": "teachers"}),)),
    Stage("teacher_eval", ("eval clip --params params.yaml --model results/teachers/{teacher} --data results/data"
                           " --out results/teacher_eval/{teacher}/metrics.json",),
          inputs=("results/teachers/{teacher}", "results/data/{eval.split}"),
          outputs=(Out("results/teacher_eval/{teacher}/metrics.json", metrics=True),), params=CLIP_EVAL,
          log="logs/teacher_eval/{teacher}.log", grids=(Grid({"teacher": "teachers"}),)),
    # One feature store per teacher and distillation split (not per duration: longer runs replay it).
    Stage("features_extract", ("features extract --params params.yaml --teacher results/teachers/{teacher}"
                               " --data results/data/{data} --out results/features/{data}/{teacher}",),
          inputs=("results/teachers/{teacher}", "results/data/{data}"),
          outputs=(Out("results/features/{data}/{teacher}", directory=True),), params=("features", "runtime"),
          log="logs/features_extract/{data}/{teacher}.log",
          grids=(Grid({"data": "distill.grid.data", "teacher": "teachers"}),)),
    Stage("distill", ("distill --params params.yaml --teacher-name {teacher} --student {student} --method {method}"
                      " --seed {seed} --duration {duration}",
                      Teacher("--teacher results/teachers/{teacher} --features results/features/{data}/{teacher}"),
                      f"--data results/data/{{data}} --out results/students/{RUN}"),
          inputs=(Teacher("results/teachers/{teacher}"), Teacher("results/features/{data}/{teacher}"),
                  "results/data/{data}"),
          outputs=(Out(f"results/students/{RUN}", directory=True),),
          params=("distill.train", "distill.students.{student}", "distill.methods.{method}", "runtime"),
          log=f"logs/distill/{RUN}.log", grids=(KD, BASELINE)),
    # Every student against every teacher it is compared with (CKA): a KD run against its own
    # teacher, a teacher-free baseline (trained once, under none/) against each teacher.
    Stage("student_eval", (f"eval clip --params params.yaml --model results/students/{TRAINED}"
                           " --teacher results/teachers/{teacher} --data results/data"
                           f" --out results/student_eval/{RUN}/metrics.json",),
          inputs=(f"results/students/{TRAINED}", "results/teachers/{teacher}",
                  "results/data/{eval.split}"),
          outputs=(Out(f"results/student_eval/{RUN}/metrics.json", metrics=True),), params=CLIP_EVAL,
          log=f"logs/student_eval/{RUN}.log",
          grids=(Grid(_runs(True), {"kd_teacher": "{teacher}"}),
                 Grid(_runs(False), {"kd_teacher": NO_TEACHER}, dvc_name="{stage}_baseline"))),
    Stage("vqa_lm", (f"vqa lm --params params.yaml --train {TRAIN} --out results/vqa/lm",),
          inputs=(TRAIN, ExternalFiles("lm")), outputs=(Out("results/vqa/lm", directory=True),),
          params=("vqa.lm", "vqa.lm_pretrain", "vqa.train_split", "runtime"), log="logs/vqa/lm.log"),
    Stage("vqa_teacher", ("vqa run --params params.yaml --encoder results/teachers/{teacher} --vlm-seed {vlm_seed}"
                          f" --train {TRAIN} --eval {FIRST_EVAL} --lm results/vqa/lm"
                          f" --out results/vqa/teachers/{{teacher}}/{VLM}"
                          f" --metrics results/vqa_metrics/teachers/{{teacher}}/{VLM}.json",),
          inputs=("results/vqa/lm", "results/teachers/{teacher}", TRAIN, FIRST_EVAL),
          outputs=(Out(f"results/vqa/teachers/{{teacher}}/{VLM}", directory=True),
                   Out(f"results/vqa_metrics/teachers/{{teacher}}/{VLM}.json", metrics=True)),
          params=VQA_RUN_PARAMS, log=f"logs/vqa/teachers/{{teacher}}/{VLM}.log",
          grids=(Grid({"teacher": "teachers", **VLM_AXIS}),)),
    Stage("vqa_student", ("vqa run --params params.yaml --encoder results/students/" + RUN + " --vlm-seed {vlm_seed}"
                          f" --train {TRAIN} --eval {FIRST_EVAL} --lm results/vqa/lm --out results/vqa/students/{RUN}/{VLM}"
                          f" --metrics results/vqa_metrics/students/{RUN}/{VLM}.json",),
          inputs=("results/vqa/lm", f"results/students/{RUN}", TRAIN, FIRST_EVAL),
          outputs=(Out(f"results/vqa/students/{RUN}/{VLM}", directory=True),
                   Out(f"results/vqa_metrics/students/{RUN}/{VLM}.json", metrics=True)),
          params=VQA_RUN_PARAMS, log=f"logs/vqa/students/{RUN}/{VLM}.log",
          grids=(Grid({**_runs(True), **VLM_AXIS}),
                 Grid({**STUDENT_AXES, **VLM_AXIS}, {"teacher": NO_TEACHER}, dvc_name="vqa_baseline"))),
    Stage("vqa_blind", ("vqa run --params params.yaml --encoder blind --vlm-seed {vlm_seed} --train " + TRAIN +
                        f" --eval {FIRST_EVAL} --lm results/vqa/lm --out results/vqa/blind/{VLM} --metrics results/vqa_metrics/blind/{VLM}.json",),
          inputs=("results/vqa/lm", TRAIN, FIRST_EVAL),
          outputs=(Out(f"results/vqa/blind/{VLM}", directory=True),
                   Out(f"results/vqa_metrics/blind/{VLM}.json", metrics=True)),
          params=VQA_RUN_PARAMS, log=f"logs/vqa/blind/{VLM}.log", grids=(Grid(VLM_AXIS, dvc_matrix=True),)),
    # Every further evaluation set, on every VLM (none by default: vqa.eval_splits has one entry).
    _score("teacher", f"teachers/{{teacher}}/{VLM}", (Grid({"teacher": "teachers", **VLM_AXIS}),)),
    _score("student", f"students/{RUN}/{VLM}", (Grid({**_runs(True), **VLM_AXIS}),
                                                Grid({**STUDENT_AXES, **VLM_AXIS}, {"teacher": NO_TEACHER},
                                                     dvc_name="{stage}_baseline"))),
    _score("blind", f"blind/{VLM}", (Grid(VLM_AXIS),), blind=True),
    Stage("report", (f"report --params params.yaml --results results --vqa-eval {FIRST_EVAL} --out results/report",),
          inputs=(FIRST_EVAL, Upstream("teacher_eval"), Upstream("teacher_train"),
                  Upstream("student_eval"), Upstream("distill"), Upstream("vqa_teacher"), Upstream("vqa_student"),
                  Upstream("vqa_blind"), EachEvalSet("results/data/{eval_set}"), Upstream("vqa_score_teacher"),
                  Upstream("vqa_score_student"), Upstream("vqa_score_blind")),
          outputs=(Out("results/report", directory=True),),
          params=("report", "teachers", "distill.grid", "vqa.seeds", "vqa.eval_splits"),
          log="logs/report.log"),
    # Optional: the standard harnesses on every model, once per split in eval.harnesses (none by
    # default). The report does not read them.
    _lmms("teacher", f"teachers/{{teacher}}/{VLM}", (Grid({"teacher": "teachers", **VLM_AXIS}),)),
    _lmms("student", f"students/{RUN}/{VLM}", (Grid({**_runs(True), **VLM_AXIS}),
                                               Grid({**STUDENT_AXES, **VLM_AXIS}, {"teacher": NO_TEACHER},
                                                    dvc_name="{stage}_baseline"))),
    _lmms("blind", f"blind/{VLM}", (Grid(VLM_AXIS),)),
    _mieb("teacher", "teachers/{teacher}", (Grid({"teacher": "teachers"}),)),
    _mieb("student", f"students/{RUN}", (KD, Grid(STUDENT_AXES, {"teacher": NO_TEACHER}, dvc_name="{stage}_baseline"))),
)
BY_NAME = {s.name: s for s in STAGES}
# The study's figures and numbers, for `dvc plots/metrics show` (written by the report stage).
DVC_PLOTS = ("results/report/teacher_effect.png", "results/report/teacher_vs_student_vqa.png",
             "results/report/zeroshot_vs_vqa.png", "results/report/learning_curves.png")
DVC_METRICS = ("results/report/effect.json", "results/report/correlations.json")


# ---------------------------------------------------------------- code dependencies


@cache
def command_function(words: tuple[str, ...]) -> tuple[str, str]:
    """(module, function) that runs `clipdistill WORDS...`, found by reading the CLI's source
    (`X.add_typer(Y, name=...)`, `@Y.command(...)` and `Y.command(...)(module.function)`), never
    by importing it: the CLI imports the report, which reads this table, so an import here
    would close a circle."""
    import ast

    tree = ast.parse(codedeps.module_file(CLI).read_text())
    groups: dict[str, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_typer"
                and node.args and isinstance(node.args[0], ast.Name)):
            name = next((k.value.value for k in node.keywords if k.arg == "name"), None)
            groups[node.args[0].id] = (getattr(node.func.value, "id", ""), name)

    def prefix(var: str) -> tuple[str, ...]:
        if var not in groups:
            return ()
        parent, name = groups[var]
        return (*prefix(parent), name)

    # `import X as Y` / `from P import X as Y` of the project's modules, for `G.command("n")(Y.f)`
    aliases = {a.asname or a.name: (f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) else a.name)
               for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               for a in node.names}

    def command_name(call) -> str | None:
        """`name` of a `G.command("name")` call, G a command group."""
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "command"
                and isinstance(call.func.value, ast.Name)):
            return call.args[0].value if call.args else ""
        return None

    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):  # @G.command("name") def f(...)
            for dec in node.decorator_list:
                if (name := command_name(dec)) is not None:
                    found[(*prefix(dec.func.value.id), name or node.name.replace("_", "-"))] = (CLI, node.name)
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)  # G.command("name")(Y.f)
              and (name := command_name(node.value.func)) and len(node.value.args) == 1
              and isinstance(fn := node.value.args[0], ast.Attribute) and isinstance(fn.value, ast.Name)
              and fn.value.id in aliases):
            found[(*prefix(node.value.func.func.value.id), name)] = (aliases[fn.value.id], fn.attr)
    match = [c for c in found if tuple(words[:len(c)]) == c]
    if not match:
        raise LookupError(f"no clipdistill command for {' '.join(words[:2])!r}")
    return found[max(match, key=len)]


def entry_modules(stage: Stage) -> set[str]:
    """The project modules the stage's CLI command imports in its body (its stage module)."""
    module, function = command_function(tuple(stage.command[0].split()))
    return codedeps.function_imports(module, function)


def code_deps(stage: Stage) -> list[str]:
    """Repository-relative paths of every project file the stage's command can run: the CLI
    layer (cli.py, cli_*.py: what importing it runs), the command's entry modules, and
    everything they import, transitively. The lazy imports in params.py's section models count
    only for the sections the stage reads."""
    sections = tuple(sorted({p.lstrip("-").split(".")[0] for p in stage.params}))
    files = codedeps.closure(sorted({CLI, *entry_modules(stage)}), shallow=(CLI,),
                             section_scoped=(PARAMS_MODULE, "Params", sections))
    return [p.relative_to(REPO).as_posix() for p in files]


# ---------------------------------------------------------------- templates


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def _fragments(parts, grid: Grid) -> list:
    return [p for p in parts if not (isinstance(p, Teacher) and grid.teacher_free)]


def _render(template: str, value_of) -> str:
    return _PLACEHOLDER.sub(lambda m: value_of(m[1]), template)


def _static_prefix(template: str) -> str:
    """The folder part of a template before its first placeholder."""
    head = template.split("{", 1)[0]
    return head.rstrip("/") if head.endswith("/") or "{" not in template else head.rpartition("/")[0]


def lookup(params: dict, dotted: str):
    """A params value; a number indexes a list (`vqa.eval_splits.0`)."""
    value = params
    for key in dotted.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


REST = "[1:]"  # an axis over a params list after its first entry (EVAL_SET_AXIS)


def axis_values(params: dict, path: str) -> list[str]:
    if path.endswith(REST):
        return [str(v) for v in lookup(params, path.removesuffix(REST))[1:]]
    value = lookup(params, path)
    return [str(v) for v in (value.keys() if isinstance(value, dict) else value)]


def _star(stage: Stage, key: str) -> tuple[str, set[str]]:
    """`X.*`: section X and the fields it leaves out, the ones named by another key (read on
    their own) or by `-X.field` (not read at all)."""
    section = key[:-2]
    return section, {k.lstrip("-").split(".")[1] for k in stage.params
                     if k.lstrip("-").startswith(section + ".") and k != key}


def bindings(stage: Stage, params: dict):
    """Every run of the stage: (grid, {placeholder: value}), in grid then axis order."""
    for grid in stage.grids:
        names = list(grid.axes)
        for values in itertools.product(*(axis_values(params, grid.axes[n]) for n in names)):
            bound = dict(zip(names, values))
            bound.update({k: _render(v, bound.__getitem__) for k, v in grid.fixed.items()})
            yield grid, bound


def render(template: str, bound: dict, params: dict) -> str:
    """A concrete path or command: axes from `bound`, dotted names from params."""
    return _render(template, lambda n: str(lookup(params, n)) if "." in n else bound[n])


def command(stage: Stage, grid: Grid) -> str:
    """The full command template: `clipdistill --log LOG` + the stage's arguments."""
    return " ".join(["clipdistill --log", stage.log, *_fragments(stage.command, grid)])


def data_inputs(stage: Stage, grid: Grid) -> list:
    return _fragments(stage.inputs, grid)


def _split_entry(stage: Stage, params: dict, bound: dict) -> dict | None:
    """The params entry of the split a run with `Sources` prepares (None for other stages)."""
    item = next((i for i in stage.inputs if isinstance(i, Sources)), None)
    return None if item is None else params["data"]["splits"][render(item.split, bound, params)]


def external_files(item: ExternalFiles, params: dict, bound: dict) -> list[str]:
    """The paths (files or folders, as params write them) an ExternalFiles input names for one run."""
    from clipdistill.params import lm_files, teacher_files

    if item.of == "teacher":
        return teacher_files((params.get("teachers") or {})[bound["teacher"]])
    return lm_files(params.get("vqa"))


def _files_inside(path: str) -> list[str]:
    """Snakemake compares files, not folders: a folder's files (recursively, sorted), else the path."""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    return [str(Path(path) / f.relative_to(folder)) for f in sorted(folder.rglob("*")) if f.is_file()] or [path]


def _run_params(stage: Stage, params: dict, bound: dict) -> tuple[str, ...]:
    """The params keys one run reads: an imported split reads only its own entry."""
    from clipdistill.params import is_imported

    entry = _split_entry(stage, params, bound)
    if entry is not None and is_imported(entry):
        return tuple(k for k in stage.params if k.startswith("data.splits."))
    return stage.params


def params_keys(stage: Stage, schema: dict | None = None) -> list[str]:
    """DVC params keys; `X.*` becomes each field of section X's model not named by another key."""
    keys = []
    for key in stage.params:
        if key.startswith("-"):
            continue
        if key.endswith(".*"):
            section, named = _star(stage, key)
            schema = schema or json.loads((REPO / "workflow/schemas/params.schema.json").read_text())
            ref = schema["properties"][section]["$ref"].rsplit("/", 1)[1]
            keys += [f"{section}.{f}" for f in schema["$defs"][ref]["properties"] if f not in named]
        else:
            keys.append(key)
    return keys


# ---------------------------------------------------------------- results layout (the report's readers)


def results_path(stage: str, results: Path, index: int = 0, **bound) -> Path:
    """Where `stage` writes its output number `index` for these placeholder values, under a
    results folder (the table's paths are relative to the project, under results/)."""
    template = BY_NAME[stage].outputs[index].path
    rel = Path(_render(template, lambda n: str(bound[n])))
    return Path(results) / rel.relative_to("results")


def student_runs(params: dict) -> list[dict]:
    """Every evaluated student as the study grid defines it, sorted as its folders would be:
    data, duration, teacher (the one it is compared with), student, method, seed, and kd_teacher
    (the teacher it was trained with, `none` for a teacher-free baseline)."""
    runs = [bound for _, bound in bindings(BY_NAME["student_eval"], params)]
    return sorted(runs, key=lambda r: tuple(r[k] for k in RUN_KEYS))


# ---------------------------------------------------------------- Snakemake (workflow/rules/*.smk)


def targets(stage: Stage, params: dict) -> list[str]:
    """Every output path of every run of the stage."""
    return [render(o.path, bound, params) for _, bound in bindings(stage, params) for o in stage.outputs]


def wildcard_constraints(stage: Stage, params: dict) -> dict[str, str]:
    """Each output placeholder matches exactly the values its grids give it."""
    wildcards = set(_PLACEHOLDER.findall(" ".join(o.path for o in stage.outputs)))
    values: dict[str, list[str]] = {w: [] for w in sorted(wildcards)}
    for _, bound in bindings(stage, params):
        for w in values:
            if bound[w] not in values[w]:
                values[w].append(bound[w])
    # a stage with no runs (a harness switched off) matches nothing, not the empty string
    return {w: "|".join(re.escape(v) for v in vs) or "(?!)" for w, vs in values.items()}


def match(stage: Stage, params: dict, wildcards: dict) -> tuple[Grid, dict]:
    """The run of the stage that writes the outputs these wildcard values name."""
    found = [(grid, bound) for grid, bound in bindings(stage, params)
             if all(bound[k] == str(v) for k, v in wildcards.items())]
    if len(found) != 1:
        raise LookupError(f"{stage.name}: {len(found)} runs match {dict(wildcards)}")
    return found[0]


def snakemake_inputs(stage: Stage, params: dict, wildcards: dict) -> list[str]:
    """Code files, then the data and results the run reads (every file of an Upstream stage)."""
    from clipdistill.params import source_files

    grid, bound = match(stage, params, wildcards)
    paths = code_deps(stage)
    for item in data_inputs(stage, grid):
        if isinstance(item, Upstream):
            paths += targets(BY_NAME[item.stage], params)
        elif isinstance(item, Sources):  # a webdataset split's source is a folder: its shards
            paths += [f for p in source_files(_split_entry(stage, params, bound)) for f in _files_inside(p)]
        elif isinstance(item, ExternalFiles):
            paths += [f for p in external_files(item, params, bound) for f in _files_inside(p)]
        elif isinstance(item, EachEvalSet):
            paths += [render(item.path, {"eval_set": s}, params) for s in axis_values(params, EVAL_SET_AXIS["eval_set"])]
        else:
            paths.append(render(item, bound, params))
    return list(dict.fromkeys(paths))


def snakemake_command(stage: Stage, params: dict, wildcards: dict) -> str:
    grid, bound = match(stage, params, wildcards)
    return render(command(stage, grid), bound, params)


def params_values(stage: Stage, params: dict, wildcards: dict) -> dict:
    """The params values the run reads (Snakemake reruns a job when they change)."""
    _, bound = match(stage, params, wildcards)
    out = {}
    for key in _run_params(stage, params, bound):
        if key.startswith("-"):
            continue
        if key.endswith(".*"):
            section, named = _star(stage, key)
            out[key] = {k: v for k, v in params[section].items() if k not in named}
        else:
            try:
                out[key] = lookup(params, render(key, bound, params))
            except KeyError:  # an optional key left out of params.yaml (e.g. vqa.lm_pretrain)
                out[key] = None
    return out


DATA_PARALLEL = ("distill", "vqa run")  # the commands that train data-parallel (torchrun, `runtime.gpus`)


def gpus(stage: Stage, params: dict) -> int:
    """GPUs one job of the stage asks the cluster for (Snakemake's `gpu` resource): none unless
    the stage reads `runtime` and `runtime.device` is cuda; then `runtime.gpus` for a
    data-parallel command, one for the others (`auto` requests none: say cuda to get GPUs)."""
    runtime = params.get("runtime") or {}
    if "runtime" not in stage.params or runtime.get("device") != "cuda":
        return 0
    return int(runtime.get("gpus", 1)) if stage.command[0].startswith(DATA_PARALLEL) else 1


def benchmark(stage: Stage) -> str:
    """Snakemake's timing file: the log's path under results/benchmarks/."""
    return "results/benchmarks/" + stage.log.removeprefix("logs/").removesuffix(".log") + ".tsv"


def trained_students(params: dict) -> list[dict]:
    """Every trained student (KD runs and teacher-free baselines), sorted as their folders."""
    runs = [bound for _, bound in bindings(BY_NAME["distill"], params)]
    return sorted(runs, key=lambda r: tuple(r[k] for k in RUN_KEYS))


# ---------------------------------------------------------------- dvc.yaml


def _dvc_template(template: str, grid: Grid, foreach: bool) -> str:
    def value_of(name):
        if "." in name:
            return "${" + name + "}"
        if name in grid.fixed:
            return _render(grid.fixed[name], value_of)
        return "${key}" if foreach else "${item." + name + "}"

    return _render(template, value_of)


def _imported_groups(stage: Stage, grid: Grid, params: dict, schema: dict | None, code: list[str]) -> dict:
    """A split-preparing stage when the study imports splits: DVC can neither filter a foreach
    nor skip a missing key, so the synthetic splits become a literal list and each import
    format a literal group whose deps name its source files (`data_prepare_vqav2@vqa_eval`)."""
    from clipdistill.params import SOURCE_KEYS, is_imported

    splits = params["data"]["splits"]
    name = dvc_name(stage, grid)
    out = {}
    synthetic = [s for s, e in splits.items() if not is_imported(e)]
    if synthetic:
        def t(template: str) -> str:
            return _render(template, lambda n: "${" + n + "}" if "." in n else "${item}")

        out[name] = {"foreach": synthetic, "do": {
            "cmd": t(command(stage, grid)), "deps": code, "params": [t(k) for k in params_keys(stage, schema)],
            "outs": [t(o.path) for o in stage.outputs]}}
    for fmt, keys in SOURCE_KEYS.items():
        group = {s: {k: str(e[k]) for k in keys} for s, e in splits.items() if e.get("format") == fmt}
        if not group:
            continue
        own = [k for k in stage.params if k.startswith("data.splits.")]
        out[f"{name}_{fmt}"] = {"foreach": group, "do": {
            "cmd": _dvc_template(command(stage, grid), grid, True),
            "deps": code + ["${item." + k + "}" for k in keys],
            "params": [_dvc_template(k, grid, True) for k in own],
            "outs": [_dvc_template(o.path, grid, True) for o in stage.outputs]}}
    return out


def dvc_stages(schema: dict | None = None, params: dict | None = None) -> dict:
    """dvc.yaml's `stages`: one entry per (stage, grid), with foreach (one axis) or matrix.
    `params` (the study's params.yaml) matters where it imports splits or lists more than one VQA
    evaluation set: DVC can slice no list, so the further sets are written out literally (none
    without params)."""
    from clipdistill.params import is_imported

    out = {}
    imports = params is not None and any(is_imported(e) for e in params.get("data", {}).get("splits", {}).values())
    rest = _further_sets(params)

    def runs(grid: Grid) -> bool:
        return bool(rest) or not any(v.endswith(REST) for v in grid.axes.values())

    for stage in STAGES:
        code = code_deps(stage)
        for grid in stage.grids:
            if not runs(grid):
                continue  # a scoring stage while vqa.eval_splits has one entry: no runs, no DVC stage
            if imports and any(isinstance(i, Sources) for i in stage.inputs):
                out.update(_imported_groups(stage, grid, params, schema, code))
                continue
            external = _external_by_run(stage, grid, params)
            foreach = len(grid.axes) == 1 and not grid.dvc_matrix

            def t(template: str, grid=grid, foreach=foreach) -> str:
                return _dvc_template(template, grid, foreach)

            deps = code[:]
            for item in data_inputs(stage, grid):
                if isinstance(item, Sources):
                    continue  # none while every split is synthetic
                if isinstance(item, ExternalFiles):
                    if not grid.axes:  # one run (vqa_lm): its files literally
                        deps += external.get("", [])
                    elif any(external.values()):  # one axis: the runs with files get ${item.path}
                        deps.append("${item.path}")
                    continue
                if isinstance(item, Upstream):
                    if any(runs(g) for g in BY_NAME[item.stage].grids):  # DVC refuses a dep nothing makes
                        deps += [_static_prefix(o.path) for o in BY_NAME[item.stage].outputs]
                elif isinstance(item, EachEvalSet):
                    deps += [_render(item.path, lambda n, s=s: s if n == "eval_set" else "${" + n + "}") for s in rest]
                else:
                    deps.append(t(item))
            body = {"cmd": t(command(stage, grid)), "deps": list(dict.fromkeys(deps))}
            if stage.params:
                body["params"] = [t(k) for k in params_keys(stage, schema)]
            outs = [t(o.path) for o in stage.outputs if not o.metrics]
            metrics = [t(o.path) for o in stage.outputs if o.metrics]
            if outs:
                body["outs"] = outs
            if metrics:
                body["metrics"] = metrics
            name = dvc_name(stage, grid)
            if grid.axes and any(external.values()):
                out.update(_external_groups(name, body, external))
            elif not grid.axes:
                out[name] = body
            elif foreach:
                out[name] = {"foreach": "${" + next(iter(grid.axes.values())) + "}", "do": body}
            else:
                out[name] = {"matrix": {k: rest if v.endswith(REST) else "${" + v + "}" for k, v in grid.axes.items()},
                             **body}
    return out


EXTERNAL = "_external"  # the DVC group of a stage's runs that read files params name (teacher_train_external@T)


def _external_by_run(stage: Stage, grid: Grid, params: dict | None) -> dict[str, list[str]]:
    """{axis value ('' without axes): external paths} of a stage with ExternalFiles inputs; {} otherwise."""
    items = [i for i in stage.inputs if isinstance(i, ExternalFiles)]
    if not items or params is None:
        return {}
    if len(grid.axes) > 1:
        raise NotImplementedError(f"{stage.name}: external files on a multi-axis grid")
    axis = next(iter(grid.axes), None)
    runs = [("", {})] if axis is None else [(b[axis], b) for _, b in bindings(stage, params) if axis in b]
    return {key: [p for i in items for p in external_files(i, params, bound)] for key, bound in runs}


def _external_groups(name: str, body: dict, external: dict[str, list[str]]) -> dict:
    """A one-axis stage some of whose runs read external files: DVC cannot skip a missing key,
    so the runs without files become a literal list (`${item}`) and those with one a group keyed
    by the axis value whose dep is its path (`teacher_train_external@T`, `${item.path}`)."""
    if any(len(v) > 1 for v in external.values()):
        raise NotImplementedError(f"{name}: more than one external file per run")
    plain = [k for k, v in external.items() if not v]
    out = {}
    if plain:
        def as_list(value):
            if isinstance(value, list):
                return [as_list(v) for v in value if v != "${item.path}"]
            return value.replace("${key}", "${item}")

        out[name] = {"foreach": plain, "do": {k: as_list(v) for k, v in body.items()}}
    out[name + EXTERNAL] = {"foreach": {k: {"path": v[0]} for k, v in external.items() if v}, "do": body}
    return out


def _further_sets(params: dict | None) -> list[str]:
    """The VQA evaluation sets after the first (vqa.eval_splits[1:]); none without params."""
    if params is None:
        return []
    try:
        return axis_values(params, EVAL_SET_AXIS["eval_set"])
    except (KeyError, IndexError, TypeError):  # an older params file: one set
        return []


def dvc_name(stage: Stage, grid: Grid) -> str:
    return grid.dvc_name.format(stage=stage.name)


def dvc_stage_of(name: str) -> str:
    """The table's stage for a DVC stage name such as `distill_baseline@xs-baseline-0`."""
    from clipdistill.params import SOURCE_KEYS

    base = name.split("@")[0]
    for stage in STAGES:
        imports = any(isinstance(i, Sources) for i in stage.inputs)
        external = any(isinstance(i, ExternalFiles) for i in stage.inputs)
        for g in stage.grids:
            if (dvc_name(stage, g) == base or (imports and base in {f"{dvc_name(stage, g)}_{f}" for f in SOURCE_KEYS})
                    or (external and base == dvc_name(stage, g) + EXTERNAL)):
                return stage.name
    raise KeyError(name)


DVC_HEADER = """\
# GENERATED from src/clipdistill/stages.py — do not edit; regenerate with
#   python -m clipdistill.stages dvc-yaml --out dvc.yaml
# (tests/test_dag.py fails when this file and the stage table differ). The same stages as the
# Snakefile: `dvc repro` reruns exactly what a params or code change touches. Where params.yaml
# imports a split (data.splits.NAME.format), its source files are listed here: regenerate after
# changing data.splits (`data prepare` refuses a source this file does not list). Code deps are
# every project file a stage's command imports (computed). Metrics are cached like every other
# artifact, so `dvc push`/`pull` carry them too.
"""


def dvc_yaml(params_file: str | Path | None = None) -> str:
    """dvc.yaml for the study's params (default: the project's params.yaml)."""
    import yaml

    path = Path(params_file) if params_file else REPO / PARAMS_FILE
    params = yaml.safe_load(path.read_text()) if path.is_file() else None
    body = yaml.safe_dump({"stages": dvc_stages(params=params)}, sort_keys=False, width=110,
                          default_flow_style=False)
    tail = yaml.safe_dump({"plots": list(DVC_PLOTS), "metrics": list(DVC_METRICS)}, sort_keys=False)
    plots = "# The study's figures and numbers: `dvc plots show`, `dvc metrics show` (and their `diff`).\n"
    return DVC_HEADER + body + plots + tail


def main(argv: list[str]) -> int:
    usage = "usage: python -m clipdistill.stages dvc-yaml [--params params.yaml] [--out dvc.yaml] | deps STAGE"
    if argv[:1] == ["dvc-yaml"]:
        opts = dict(zip(argv[1::2], argv[2::2]))
        if len(argv) % 2 == 0 or set(opts) - {"--params", "--out"}:
            raise SystemExit(usage)
        text = dvc_yaml(opts.get("--params", Path.cwd() / PARAMS_FILE))
        if "--out" in opts:
            from clipdistill.io import atomic_file

            with atomic_file(Path(opts["--out"])) as fh:
                fh.write(text)
        else:
            sys.stdout.write(text)
        return 0
    if argv[:1] == ["deps"] and len(argv) == 2:
        sys.stdout.write("".join(f"{p}\n" for p in code_deps(BY_NAME[argv[1]])))
        return 0
    raise SystemExit(usage)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
