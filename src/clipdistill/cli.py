"""The `clipdistill` command: one subcommand per stage. Snakemake and DVC call only this.

Each command parses its options and calls its stage module, imported inside the command:
a stage's import closure (its code dependencies) is its own module's, not the CLI's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from clipdistill import cli_tools as tools
from clipdistill.cli_tools import PARAMS, RESULTS_DATA, DataOpt, ParamsOpt, opt, say
from clipdistill.io import ClipdistillError, Tee
from clipdistill.params import load_section

app = typer.Typer(help="Distil CLIP into small students and judge them inside a LLaVA-style VLM.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

data_app = typer.Typer(help="Data splits: the synthetic world and imported datasets.", no_args_is_help=True)
teacher_app = typer.Typer(help="Teachers: trained here or external open_clip weights.", no_args_is_help=True)
features_app = typer.Typer(help="The teacher feature store.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluation of encoders.", no_args_is_help=True)
export_app = typer.Typer(help="Export encoders to other ecosystems.", no_args_is_help=True)
vqa_app = typer.Typer(help="LLaVA-style VQA: train and evaluate a VLM per encoder.", no_args_is_help=True)
params_app = typer.Typer(help="params.yaml: validation and JSON Schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(teacher_app, name="teacher")
app.add_typer(features_app, name="features")
app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")
app.add_typer(vqa_app, name="vqa")
app.add_typer(params_app, name="params")


@app.callback()
def _global_options(log: Annotated[Optional[Path], typer.Option(help="also write stderr to this file")] = None,
                    threads: Annotated[int, typer.Option(envvar="CLIPDISTILL_THREADS",
                                                         help="CPU threads for torch")] = 1) -> None:
    # A fixed thread count keeps CPU results bit-identical whoever launches the stage
    # (Snakemake exports OMP_NUM_THREADS=<rule threads>, DVC exports nothing). One thread per
    # job: the models are small, and two one-thread jobs side by side beat one two-thread job.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if log is not None:
        sys.stderr = Tee(sys.stderr, log)


@data_app.command("prepare")
def data_prepare(split: Annotated[str, opt("split name from params data.splits")],
                 out: Annotated[Path, opt("output directory of the split")], params: ParamsOpt = PARAMS) -> None:
    """Write one split of params `data.splits`: render it (synthetic) or import it (format: vqav2)."""
    from clipdistill.data.prepare import prepare

    counts = prepare(load_section(params, "data"), split, out)["counts"]
    say("wrote " + ", ".join(f"{v} {k}" for k, v in counts.items() if isinstance(v, int)) + f" to {out}")


@data_app.command("preview")
def data_preview(data: Annotated[Path, opt("output of `data prepare`")] = RESULTS_DATA,
                 out: Annotated[Path, opt("PNG to write")] = Path("results/preview/scenes.png"),
                 split: Annotated[Optional[list[str]], opt("split(s) to show (default: from --params)")] = None,
                 n: Annotated[int, opt("scenes per split")] = 6, params: ParamsOpt = PARAMS) -> None:
    """Draw a PNG grid of scenes with their caption and first question."""
    from clipdistill.data.preview import preview, preview_splits

    preview(data, split or preview_splits(params), n, out)


@teacher_app.command("train")
def teacher_train(name: Annotated[str, opt("teacher name from params `teachers`")], data: DataOpt = RESULTS_DATA,
                  out: Annotated[Optional[Path], opt("model directory")] = None, params: ParamsOpt = PARAMS) -> None:
    """Train a pipeline teacher on the `pretrain` split, or import an external one (offline)."""
    spec, runtime = load_section(params, "teachers"), tools.runtime(params)  # params errors: before the imports
    from clipdistill.teachers.stage import run

    out = out or Path("results/teachers") / name
    manifest = run(spec, name, data, out, runtime)
    say(f"teacher {name}: {manifest['model_name']}, {manifest['params']['total']:,} params -> {out}")


@features_app.command("extract")
def features_extract(teacher: Annotated[Path, opt("teacher model directory")],
                     data: Annotated[Path, opt("the distillation split directory (results/data/SPLIT)")],
                     out: Annotated[Path, opt("feature store directory")],
                     params: ParamsOpt = PARAMS) -> None:
    """Run the frozen teacher once over a distillation split into a feature store."""
    spec, runtime = load_section(params, "features"), tools.runtime(params)  # params errors: before the imports
    from clipdistill.features.stage import run

    m = run(spec, teacher, data, out, runtime)
    say(f"stored {m['count']} samples ({m['dtype']}) in {len(m['shards'])} shards -> {out}")


@eval_app.command("clip")
def eval_clip(model: Annotated[Path, opt("model directory")], out: Annotated[Path, opt("metrics.json to write")],
              data: DataOpt = RESULTS_DATA,
              csv: Annotated[Optional[Path], opt("evaluate retrieval on this open_clip CSV instead")] = None,
              teacher: Annotated[Optional[Path], opt("teacher model directory: adds CKA to it")] = None,
              params: ParamsOpt = PARAMS) -> None:
    """Zero-shot classification (prompt ensembles), image<->text retrieval R@k, CKA to a teacher."""
    spec, runtime = load_section(params, "eval"), tools.runtime(params)  # params errors: before the imports
    from clipdistill.evaluate.stage import run

    metrics = run(spec, model, out, data, csv, teacher, runtime)
    say(f"{model}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["summary"].items()))


@app.command("distill")
def distill_cmd(student: Annotated[str, opt("student name from distill.students")],
                method: Annotated[str, opt("method name from distill.methods")],
                seed: Annotated[int, opt("training seed")],
                data: Annotated[Path, opt("the distillation split directory")],
                out: Annotated[Path, opt("student model directory")],
                teacher_name: Annotated[str, opt("teacher name, or 'none'", "--teacher-name")] = "none",
                teacher: Annotated[Optional[Path], opt("teacher model directory")] = None,
                features: Annotated[Optional[Path], opt("teacher feature store")] = None,
                duration: Annotated[int, opt("train for this many times distill.train.epochs (and max_steps)")] = 1,
                params: ParamsOpt = PARAMS) -> None:
    """Distil a teacher into a student with a method (or train a teacher-free baseline with
    --teacher-name none); resumes from its last checkpoint. Under `torchrun` it trains
    data-parallel (gloo on CPU, NCCL on GPU); rank 0 writes."""
    spec, runtime = load_section(params, "distill"), tools.dp_runtime(params)  # params errors: before the imports
    from clipdistill.distill.stage import run

    if run(spec, student=student, method=method, seed=seed, data=data, out=out, teacher_name=teacher_name,
           teacher=teacher, features=features, duration=duration, runtime=runtime) is not None:
        say(f"student {student} ({method}, seed {seed}) of teacher {teacher_name} -> {out}")


@vqa_app.command("lm")
def vqa_lm(out: Annotated[Path, opt("directory for the language model and its tokenizer")],
           train: Annotated[Path, opt("the VQA training split's folder (vqa.train_split)")],
           params: ParamsOpt = PARAMS) -> None:
    """The language model every VLM starts from (`vqa.lm`), its vocabulary and (with
    `vqa.lm_pretrain`) its instruction tuning from the training split's text only."""
    spec, runtime = tools.vqa_section(params), tools.runtime(params)  # params errors: before the imports
    from clipdistill.vqa.language import run

    counts = run(spec, train, out, runtime)["counts"]
    loss = counts["final_loss"]
    say(f"language model: {counts['parameters']:,} parameters, vocab {counts['vocab']}"
        + (f", final loss {loss:.3f}" if loss is not None else "") + f" -> {out}")


@vqa_app.command("run")
def vqa_run(encoder: Annotated[str, opt("open_clip model directory, or 'blind'")],
            out: Annotated[Path, opt("directory for the VLM and its answers")],
            metrics: Annotated[Path, opt("metrics.json to write")],
            train: Annotated[Path, opt("the VQA training split's folder (vqa.train_split)")],
            eval: Annotated[Path, opt("the study's VQA evaluation split's folder (the first of vqa.eval_splits)")],
            lm: Annotated[Path | None, opt("language model from `clipdistill vqa lm` "
                                           "(default: prepared here from params)")] = None,
            vlm_seed: Annotated[int | None, typer.Option(help="VLM seed: projector init and data order "
                                                         "(default: the first of vqa.seeds)", min=0)] = None,
            params: ParamsOpt = PARAMS) -> None:
    """Two-stage LLaVA training on --train, greedy evaluation on --eval (VQAv2 soft accuracy).
    Under `torchrun` the training is data-parallel; rank 0 evaluates and writes."""
    spec, runtime = tools.vqa_section(params), tools.dp_runtime(params)  # params errors: before the imports
    from clipdistill.vqa.stage import run

    summary = run(spec, encoder=encoder, out=out, metrics=metrics, train=train, eval=eval, lm=lm, vlm_seed=vlm_seed,
                  runtime=runtime)
    if summary is not None:
        collapsed = summary["diagnostics"]["answer_health"]["collapsed_types"]
        say(f"vqa {encoder}: overall {summary['overall']:.1f} on {summary['count']} questions"
            + (f", COLLAPSED on {', '.join(collapsed)}" if collapsed else "") + f" -> {out}")


data_app.command("synth", help="The same as `data prepare` (its former name).")(data_prepare)
app.command("report")(tools.report_cmd)
export_app.command("hf")(tools.export_hf_cmd)
vqa_app.command("score")(tools.vqa_score)
eval_app.command("lmms")(tools.eval_lmms)
eval_app.command("mieb")(tools.eval_mieb)
app.command("push")(tools.push_cmd)
app.command("pull")(tools.pull_cmd)
app.command("sync")(tools.sync_cmd)
params_app.command("check")(tools.params_check)
params_app.command("schema")(tools.params_schema)


def main() -> None:
    """Entry point: people get a one-line cause and exit status 2, not a traceback."""
    try:
        app()
    except ClipdistillError as exc:
        print(f"clipdistill: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("clipdistill: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
