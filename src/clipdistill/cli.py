"""The `clipdistill` command: one subcommand per stage. Snakemake and DVC call only this."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from clipdistill.io import ClipdistillError, rounded
from clipdistill.params import load_section

app = typer.Typer(help="Distil CLIP into small students and judge them inside a LLaVA-style VLM.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="The synthetic world and dataset formats.", no_args_is_help=True)
params_app = typer.Typer(help="params.yaml: validation and JSON Schema.", no_args_is_help=True)
teacher_app = typer.Typer(help="Teachers: trained here or external open_clip weights.", no_args_is_help=True)
features_app = typer.Typer(help="The teacher feature store.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluation of encoders.", no_args_is_help=True)
export_app = typer.Typer(help="Export encoders to other ecosystems.", no_args_is_help=True)
vqa_app = typer.Typer(help="LLaVA-style VQA: train and evaluate a VLM per encoder.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(teacher_app, name="teacher")
app.add_typer(features_app, name="features")
app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")
app.add_typer(vqa_app, name="vqa")
app.add_typer(params_app, name="params")

class _Tee:
    """Copy of stderr into a log file (progress bars and messages alike)."""

    def __init__(self, stream, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream, self.file = stream, open(path, "w", encoding="utf-8")

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


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
        sys.stderr = _Tee(sys.stderr, log)


ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read the stage's section from")]


@data_app.command("synth")
def data_synth(split: Annotated[str, typer.Option(help="split name from params data.splits")],
               out: Annotated[Path, typer.Option(help="output directory of the split")],
               params: ParamsOpt = Path("params.yaml")) -> None:
    """Render one split of the synthetic world (images, CSV, shards, LLaVA JSON, VQAv2 JSON)."""
    from clipdistill.data.synth import synthesize

    counts = synthesize(load_section(params, "data"), split, out)["counts"]
    typer.echo(f"wrote {counts['images']} scenes, {counts['questions']} questions to {out}", err=True)


@data_app.command("preview")
def data_preview(data: Annotated[Path, typer.Option(help="output of `data synth`")] = Path("results/data"),
                 out: Annotated[Path, typer.Option(help="PNG to write")] = Path("results/preview/scenes.png"),
                 split: Annotated[Optional[list[str]], typer.Option(help="split(s) to show")] = None,
                 n: Annotated[int, typer.Option(help="scenes per split")] = 6) -> None:
    """Draw a PNG grid of scenes with their caption and first question."""
    from clipdistill.data.preview import preview

    preview(data, split or ["vqa_eval"], n, out)


@teacher_app.command("train")
def teacher_train(name: Annotated[str, typer.Option(help="teacher name from params `teachers`")],
                  data: Annotated[Path, typer.Option(help="folder of data splits")] = Path("results/data"),
                  out: Annotated[Optional[Path], typer.Option(help="model directory")] = None,
                  params: ParamsOpt = Path("params.yaml")) -> None:
    """Train a pipeline teacher on the `pretrain` split, or import an external one (offline)."""
    from clipdistill.data.splits import load_split
    from clipdistill.teachers import train as T

    spec = _pick(load_section(params, "teachers"), name, "teachers")
    out = out or Path("results/teachers") / name
    if spec.source == "external":
        manifest = T.import_external(out, name, spec)
    else:
        split = load_split(data / "pretrain")
        model, tokenizer, log = T.train_teacher(spec, split)
        manifest = T.save_pipeline_teacher(out, name, spec, split, model, tokenizer, log)
    typer.echo(f"teacher {name}: {manifest['model_name']}, {manifest['params']['total']:,} params -> {out}", err=True)


@features_app.command("extract")
def features_extract(teacher: Annotated[Path, typer.Option(help="teacher model directory")],
                     out: Annotated[Path, typer.Option(help="feature store directory")],
                     data: Annotated[Path, typer.Option(help="folder of data splits")] = Path("results/data"),
                     params: ParamsOpt = Path("params.yaml")) -> None:
    """Run the frozen teacher once over the distillation split into a feature store."""
    from clipdistill.data.splits import load_split
    from clipdistill.features.store import extract
    from clipdistill.models import load_model_dir

    spec = load_section(params, "features")
    manifest = extract(load_model_dir(teacher), load_split(data / spec.split), spec, out)
    typer.echo(f"stored {manifest['count']} samples ({manifest['dtype']}) in {len(manifest['shards'])} shards -> {out}",
               err=True)


@eval_app.command("clip")
def eval_clip(model: Annotated[Path, typer.Option(help="model directory")],
              out: Annotated[Path, typer.Option(help="metrics.json to write")],
              data: Annotated[Path, typer.Option(help="folder of data splits")] = Path("results/data"),
              csv: Annotated[Optional[Path], typer.Option(help="evaluate retrieval on this open_clip CSV instead")] = None,
              teacher: Annotated[Optional[Path], typer.Option(help="teacher model directory: adds CKA to it")] = None,
              params: ParamsOpt = Path("params.yaml")) -> None:
    """Zero-shot classification (prompt ensembles), image<->text retrieval R@k, CKA to a teacher."""
    from clipdistill.data.splits import load_pairs, load_split
    from clipdistill.evaluate.clip_eval import evaluate_clip
    from clipdistill.io import write_json
    from clipdistill.models import load_model_dir

    spec = load_section(params, "eval")
    bundle = load_model_dir(model)
    split = load_pairs(csv, bundle.preprocess["size"][0]) if csv else load_split(data / spec.split)
    metrics = evaluate_clip(bundle, split, spec, load_model_dir(teacher) if teacher else None)
    write_json(out, metrics)
    typer.echo(f"{model}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["summary"].items()), err=True)


@app.command("distill")
def distill_cmd(student: Annotated[str, typer.Option(help="student name from distill.students")],
                method: Annotated[str, typer.Option(help="method name from distill.methods")],
                seed: Annotated[int, typer.Option(help="training seed")],
                data: Annotated[Path, typer.Option(help="the distillation split directory")],
                out: Annotated[Path, typer.Option(help="student model directory")],
                teacher_name: Annotated[str, typer.Option("--teacher-name", help="teacher name, or 'none'")] = "none",
                teacher: Annotated[Optional[Path], typer.Option(help="teacher model directory")] = None,
                features: Annotated[Optional[Path], typer.Option(help="teacher feature store")] = None,
                params: ParamsOpt = Path("params.yaml")) -> None:
    """Distil a teacher into a student with a method (or train a teacher-free baseline with
    --teacher-name none); resumes from its last checkpoint. Under `torchrun` it trains
    data-parallel (gloo on CPU, NCCL on GPU); rank 0 writes."""
    import shutil

    from clipdistill.data.splits import load_split
    from clipdistill.distill.parallel import init_from_env
    from clipdistill.distill.train import Teacher, distill
    from clipdistill.features.store import FeatureStore
    from clipdistill.losses import teacher_fields
    from clipdistill.models import load_model_dir, save_model_dir
    from clipdistill.teachers.train import log_csv

    spec = load_section(params, "distill")
    rank, _ = init_from_env()
    student_spec = _pick(spec.students, student, "distill.students")
    method_spec = _pick(spec.methods, method, "distill.methods")
    if teacher_name == "none":
        if teacher is not None or features is not None:
            raise ClipdistillError("--teacher-name none trains a teacher-free baseline: drop --teacher/--features")
        if uses := teacher_fields(method_spec):
            raise ClipdistillError(f"method {method!r} needs teacher targets ({', '.join(uses)}); give --teacher-name,"
                                   " --teacher and --features")
    elif teacher is None or features is None:
        raise ClipdistillError(f"teacher {teacher_name!r}: give both --teacher and --features")
    split = load_split(data)
    if teacher_name == "none":
        source, teacher_id = Teacher(), None
    else:
        store = FeatureStore(features)
        bundle = load_model_dir(teacher)
        store.check(data_sha256=split.content_sha256, preprocess=bundle.preprocess,
                    image_size=list(split.images.shape[-2:]))
        if store.manifest["teacher"]["weights_sha256"] != bundle.manifest["weights_sha256"]:
            raise ClipdistillError(f"{features}: feature store was made by another teacher than {teacher}")
        source = Teacher(store=store) if spec.train.teacher_mode == "store" else Teacher(bundle=bundle)
        teacher_id = store.manifest["teacher"]
    checkpoint = out.parent / f".{out.name}.ckpt" / "last.safetensors"
    info: dict = {}
    model, tok_spec, log = distill(student_spec, method_spec, spec.train, seed, split, source, checkpoint, info=info)
    provenance = {"source": "distilled", "teacher": teacher_id, "teacher_name": teacher_name,
                  "resumed_from_step": info["resumed_from"],
                  "student": student, "method": method, "method_spec": {k: v.options() for k, v in method_spec.items()},
                  "seed": seed, "train": spec.train.model_dump(mode="json"),
                  "data": {"split": str(data), "content_sha256": split.content_sha256},
                  "final_loss": log[-1]["loss"] if log else None}
    if rank != 0:
        return
    save_model_dir(out, model, student_spec.arch, tok_spec, provenance, extra_files={"train_log.csv": log_csv(log)})
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    typer.echo(f"student {student} ({method}, seed {seed}) of teacher {teacher_name} -> {out}", err=True)


@export_app.command("hf")
def export_hf_cmd(model: Annotated[Optional[Path], typer.Option(help="open_clip model directory")] = None,
                  out: Annotated[Optional[Path], typer.Option(help="Hugging Face CLIPVisionModel directory")] = None,
                  vlm: Annotated[Optional[Path], typer.Option(help="a saved VLM (`vqa run` output): add its "
                                                                "LlavaProcessor + chat template in place")] = None) -> None:
    """Export the vision tower as a transformers CLIPVisionModel + CLIPImageProcessor, or
    (--vlm) upgrade a VLM directory so AutoProcessor, pipelines and lmms-eval can drive it."""
    from clipdistill.export.hf import export_hf, upgrade_vlm_dir
    from clipdistill.models import load_model_dir

    if vlm is not None:
        model_dir, written = upgrade_vlm_dir(vlm)
        typer.echo(f"{model_dir}: " + ("LlavaProcessor and chat template written" if written
                                       else "already has a LlavaProcessor"), err=True)
        return
    if model is None or out is None:
        raise ClipdistillError("export hf needs --model and --out (or --vlm DIR)")
    manifest = export_hf(load_model_dir(model), out)
    typer.echo(f"{model} -> {out} ({manifest['layers']} layers, {manifest['patches']} patches)", err=True)


@eval_app.command("lmms")
def eval_lmms(model: Annotated[Path, typer.Option(help="VLM directory (`vqa run` output or its model/)")],
              out: Annotated[Path, typer.Option(help="folder for lmms-eval's task and results.json")],
              data: Annotated[Path, typer.Option(help="VQAv2-format split (questions.json, annotations.json)")] =
              Path("results/data/vqa_eval"),
              limit: Annotated[Optional[int], typer.Option(help="first N questions only")] = None,
              params: ParamsOpt = Path("params.yaml")) -> None:
    """lmms-eval (HF LLaVA model type, its VQAv2 scoring) on a local VQAv2-format split."""
    from clipdistill.harness.lmms import run_lmms

    summary = run_lmms(model, data, out, load_section(params, "vqa").max_new_tokens, limit)
    typer.echo(f"lmms-eval {model}: VQAv2 accuracy {summary['accuracy']:.2f} on {summary['count']} questions"
               f" -> {out / 'results.json'}", err=True)


@eval_app.command("mieb")
def eval_mieb(model: Annotated[Path, typer.Option(help="clipdistill / open_clip model directory")],
              out: Annotated[Path, typer.Option(help="JSON to write")],
              data: Annotated[Path, typer.Option(help="folder of data splits")] = Path("results/data"),
              params: ParamsOpt = Path("params.yaml")) -> None:
    """mteb (MIEB) on local tasks from the eval split: zero-shot per label set, image<->text retrieval."""
    from clipdistill.harness.mieb import run_mieb

    spec = load_section(params, "eval")
    summary = run_mieb(model, data / spec.split, out, spec.batch_size)
    shown = [f"{k} {v['top1']:.3f}" for k, v in summary["zeroshot"].items()]
    shown += [f"{k} R@1 {v['R@1']:.3f}" for k, v in summary["retrieval"].items()]
    typer.echo(f"mteb {model}: " + ", ".join(shown), err=True)


@vqa_app.command("lm")
def vqa_lm(out: Annotated[Path, typer.Option(help="directory for the language model and its tokenizer")],
           data: Annotated[Path, typer.Option(help="folder of data splits")] = Path("results/data"),
           params: ParamsOpt = Path("params.yaml")) -> None:
    """The language model every VLM starts from (`vqa.lm`), instruction-tuned on the VQA
    training text when `vqa.lm_pretrain` is set."""
    from clipdistill.vqa.language import prepare_language, save_language

    spec = load_section(params, "vqa")
    lm, tokenizer, log = prepare_language(spec, data / "vqa_train")
    manifest = save_language(out, lm, tokenizer, log, spec)
    loss = manifest["counts"]["final_loss"]
    typer.echo(f"language model: {manifest['counts']['parameters']:,} parameters, vocab {len(tokenizer)}"
               + (f", final loss {loss:.3f}" if loss is not None else "") + f" -> {out}", err=True)


@vqa_app.command("run")
def vqa_run(encoder: Annotated[str, typer.Option(help="open_clip model directory, or 'blind'")],
            out: Annotated[Path, typer.Option(help="directory for the VLM and its answers")],
            metrics: Annotated[Path, typer.Option(help="metrics.json to write")],
            data: Annotated[Path, typer.Option(help="folder of data splits")] = Path("results/data"),
            lm: Annotated[Path | None, typer.Option(help="language model from `clipdistill vqa lm` "
                                                         "(default: prepared here from params)")] = None,
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Two-stage LLaVA training on vqa_train, greedy evaluation on vqa_eval (VQAv2 soft accuracy).
    Under `torchrun` the training is data-parallel; rank 0 evaluates and writes."""
    from clipdistill.distill.parallel import init_from_env

    from clipdistill.data.formats import read_vqa
    from clipdistill.data.splits import load_split
    from clipdistill.export.hf import save_vlm_processor, to_hf
    from clipdistill.io import atomic_dir, write_json
    from clipdistill.models import ClipBundle, create_model, load_model_dir
    from clipdistill.models.clip import preprocess_cfg
    from clipdistill.teachers.train import log_csv
    from clipdistill.vqa.diagnostics import vqa_diagnostics
    from clipdistill.vqa.evaluate import evaluate_vqa, jsonl
    from clipdistill.vqa.language import load_language_dir
    from clipdistill.vqa.train import pixel_values, train_vlm

    spec = load_section(params, "vqa")
    language = load_language_dir(lm) if lm else None  # before any data is read: a bad path fails at once
    rank, _ = init_from_env()
    blind = encoder == "blind"
    if blind:
        tower = create_model("cd-student-xs", 0)
        bundle = ClipBundle(tower, None, "cd-student-xs", preprocess_cfg(tower), {"weights_sha256": None}, {})
    else:
        bundle = load_model_dir(encoder)
    train_split, eval_split = load_split(data / "vqa_train"), load_split(data / "vqa_eval")
    records, _ = read_vqa(data / "vqa_eval" / "questions.json", data / "vqa_eval" / "annotations.json",
                          data / "vqa_eval", check_images=False)
    # the exported tower in memory (every rank builds its own; HF saves only on rank 0)
    vlm, tokenizer, processor, log = train_vlm(to_hf(bundle), data / "vqa_train", train_split, spec, blind, language)
    if rank != 0:  # data-parallel training: rank 0 evaluates and writes
        return
    eval_pixels = pixel_values(eval_split.images, processor, blind)
    rows, summary, per_type = evaluate_vqa(vlm, tokenizer, records, dict(enumerate(eval_pixels)),
                                           spec.eval_batch_size, spec.max_new_tokens, model_id=str(encoder))
    summary["diagnostics"] = vqa_diagnostics(vlm, processor, data / "vqa_train", train_split.images,
                                             data / "vqa_eval", eval_split.images, records,
                                             [r["text"] for r in rows], summary, blind)
    with atomic_dir(out) as tmp:
        vlm.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        save_vlm_processor(tmp / "model", tokenizer, processor, vlm.config)  # AutoProcessor, pipelines, lmms-eval
        (tmp / "answers.jsonl").write_text(jsonl(rows))
        (tmp / "per_type.csv").write_text(per_type)
        (tmp / "train_log.csv").write_bytes(log_csv(log))
    write_json(metrics, rounded(summary, 4))
    collapsed = summary["diagnostics"]["answer_health"]["collapsed_types"]
    typer.echo(f"vqa {encoder}: overall {summary['overall']:.1f} on {summary['count']} questions"
               + (f", COLLAPSED on {', '.join(collapsed)}" if collapsed else "") + f" -> {out}", err=True)


@app.command("report")
def report_cmd(results: Annotated[Path, typer.Option(help="the pipeline's results folder")] = Path("results"),
               vqa_eval: Annotated[Path, typer.Option(help="VQA evaluation split")] = Path("results/data/vqa_eval"),
               out: Annotated[Path, typer.Option(help="report folder")] = Path("results/report"),
               params: ParamsOpt = Path("params.yaml")) -> None:
    """The verdict (teacher effect, paired and per teacher), the study table (CSV + Markdown), plots."""
    from clipdistill.report.study import report

    spec = load_section(params, "report")
    analysis = report(results, vqa_eval, out, spec.bootstrap, spec.seed, spec.equivalence_margin)
    typer.echo(analysis["answer"], err=True)


RemoteOpt = Annotated[Optional[str], typer.Option(help="DVC remote name (default: the project's default remote)")]
ProjectOpt = Annotated[Path, typer.Option(help="project root (where dvc.yaml lives)")]


@app.command("push")
def push_cmd(remote: RemoteOpt = None, project: ProjectOpt = Path(".")) -> None:
    """Upload every tracked artifact to a DVC remote."""
    from clipdistill.share import push

    typer.echo(push(project, remote).strip() or "pushed", err=True)


@app.command("pull")
def pull_cmd(remote: RemoteOpt = None, project: ProjectOpt = Path(".")) -> None:
    """Fetch artifacts from a DVC remote, check them out, then `sync` Snakemake's timestamps."""
    from clipdistill.share import pull, sync

    pull(project, remote)
    sync(project)
    typer.echo("pulled; DVC and Snakemake agree that nothing needs to run", err=True)


@app.command("sync")
def sync_cmd(project: ProjectOpt = Path(".")) -> None:
    """Make DVC and Snakemake agree: after a killed Snakemake run, `dvc repro`, `dvc pull` or `dvc checkout`."""
    from clipdistill.state import sync

    done = sync(project)
    recorded = f"recorded {len(done.committed)} finished stage(s) in dvc.lock; " if done.committed else ""
    if done.pending:
        shown = ", ".join(done.pending[:5]) + (f" (+{len(done.pending) - 5} more)" if len(done.pending) > 5 else "")
        typer.echo(f"{recorded}{len(done.pending)} stage(s) still to run, for both runners: {shown}", err=True)
    else:
        typer.echo(f"{recorded}in sync: dvc.lock matches every artifact, Snakemake has nothing to run", err=True)


def _pick(entries: dict, name: str, section: str):
    if name not in entries:
        raise ClipdistillError(f"no {name!r} in params `{section}`; defined: {', '.join(entries) or 'none'}")
    return entries[name]


@params_app.command("check")
def params_check(params: ParamsOpt = Path("params.yaml")) -> None:
    """Validate every section of a params file."""
    from clipdistill.params import load_params

    load_params(params)
    typer.echo(f"{params}: ok", err=True)


@params_app.command("schema")
def params_schema(out: Annotated[Optional[Path], typer.Option(help="file to write (default stdout)")] = None) -> None:
    """Print (or write) the JSON Schema of params.yaml."""
    from clipdistill.io import atomic_file
    from clipdistill.params import json_schema_text

    if out is None:
        sys.stdout.write(json_schema_text())
    else:
        with atomic_file(out) as fh:
            fh.write(json_schema_text())


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
