"""The commands around the pipeline (report, further VQA sets, export, harnesses, sharing, params) and the
option types every command shares; `cli.py` registers them. Each imports its module lazily.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from clipdistill.io import ClipdistillError
from clipdistill.params import load_section


def say(text: str) -> None:
    typer.echo(text, err=True)


def opt(help: str, *names: str):  # noqa: A002 - typer's own keyword
    return typer.Option(*names, help=help)


ParamsOpt = Annotated[Path, opt("params.yaml to read the stage's section from", "--params")]
DataOpt = Annotated[Path, opt("folder of data splits")]
RemoteOpt = Annotated[Optional[str], opt("DVC remote name (default: the project's default remote)")]
ProjectOpt = Annotated[Path, opt("project root (where dvc.yaml lives)")]
RESULTS_DATA, PARAMS = Path("results/data"), Path("params.yaml")


def vqa_section(params: Path):
    """`vqa`, its split names known to params `data.splits` (else one line, exit 2)."""
    from clipdistill.params import load_vqa_section

    return load_vqa_section(params)


def runtime(params: Path, data_parallel: bool = False):
    """The stage's device and precision (params `runtime`), resolved before any work: a missing
    device is a one-line error (exit 2). A data-parallel command asked for several GPUs
    (`runtime.gpus`) replaces this process with torchrun running the same command line."""
    import os

    from clipdistill.training.runtime import setup, torchrun_argv

    spec = load_section(params, "runtime")
    resolved = setup(spec)
    if data_parallel and (argv := torchrun_argv(spec, sys.argv)):
        os.execv(argv[0], argv)
    return resolved


def dp_runtime(params: Path):
    """`runtime` for a data-parallel command (distill, vqa run)."""
    return runtime(params, data_parallel=True)


def export_hf_cmd(model: Annotated[Optional[Path], opt("open_clip model directory")] = None,
                  out: Annotated[Optional[Path], opt("Hugging Face CLIPVisionModel directory")] = None,
                  vlm: Annotated[Optional[Path], opt("a saved VLM (`vqa run` output): add its "
                                                     "LlavaProcessor + chat template in place")] = None) -> None:
    """Export the vision tower as a transformers CLIPVisionModel + CLIPImageProcessor, or
    (--vlm) upgrade a VLM directory so AutoProcessor, pipelines and lmms-eval can drive it."""
    from clipdistill.export.hf import export_hf, upgrade_vlm_dir
    from clipdistill.models import load_model_dir

    if vlm is not None:
        model_dir, written = upgrade_vlm_dir(vlm)
        return say(f"{model_dir}: " + ("LlavaProcessor and chat template written" if written
                                       else "already has a LlavaProcessor"))
    if model is None or out is None:
        raise ClipdistillError("export hf needs --model and --out (or --vlm DIR)")
    manifest = export_hf(load_model_dir(model), out)
    say(f"{model} -> {out} ({manifest['layers']} layers, {manifest['patches']} patches)")


def vqa_score(vlm: Annotated[Path, opt("a saved VLM (`vqa run`'s output folder)")],
              eval: Annotated[Path, opt("a further VQA evaluation split's folder (vqa.eval_splits[1:])")],
              out: Annotated[Path, opt("directory for the answers and per-type accuracies")],
              metrics: Annotated[Path, opt("metrics.json to write")],
              blind: Annotated[bool, typer.Option(help="the VLM is the blind baseline's: show it the grey image")] = False,
              params: ParamsOpt = PARAMS) -> None:
    """Greedy evaluation of a trained VLM on one more evaluation set (VQAv2 soft accuracy)."""
    spec, resolved = vqa_section(params), runtime(params)  # params errors: before the imports
    from clipdistill.vqa.stage import score

    summary = score(spec, vlm=vlm, eval=eval, out=out, metrics=metrics, blind=blind, runtime=resolved)
    say(f"vqa {vlm} on {eval.name}: overall {summary['overall']:.1f} on {summary['count']} questions -> {metrics}")


def report_cmd(results: Annotated[Path, opt("the pipeline's results folder")] = Path("results"),
               vqa_eval: Annotated[Path, opt("VQA evaluation split")] = Path("results/data/vqa_eval"),
               out: Annotated[Path, opt("report folder")] = Path("results/report"), params: ParamsOpt = PARAMS) -> None:
    """The verdict (teacher effect, paired and per teacher), the study table (CSV + Markdown), plots."""
    from clipdistill.report.study import report

    spec = load_section(params, "report")
    say(report(results, vqa_eval, out, spec.bootstrap, spec.seed, spec.equivalence_margin, params=params)["answer"])


def eval_lmms(model: Annotated[Path, opt("VLM directory (`vqa run` output or its model/)")],
              out: Annotated[Path, opt("folder for lmms-eval's task and results.json")],
              data: Annotated[Path, opt("VQAv2-format split (questions.json, annotations.json)")] =
              Path("results/data/vqa_eval"),
              limit: Annotated[Optional[int], opt("first N questions only")] = None,
              params: ParamsOpt = PARAMS) -> None:
    """lmms-eval (HF LLaVA model type, its VQAv2 scoring) on a local VQAv2-format split."""
    from clipdistill.harness.lmms import run_lmms

    summary = run_lmms(model, data, out, load_section(params, "vqa").max_new_tokens, limit)
    say(f"lmms-eval {model}: VQAv2 accuracy {summary['accuracy']:.2f} on {summary['count']} questions"
        f" -> {out / 'results.json'}")


def eval_mieb(model: Annotated[Path, opt("clipdistill / open_clip model directory")],
              out: Annotated[Path, opt("JSON to write")], data: DataOpt = RESULTS_DATA,
              split: Annotated[Optional[str], opt("split under --data (default: params eval.split)")] = None,
              params: ParamsOpt = PARAMS) -> None:
    """mteb (MIEB) on local tasks from the eval split: zero-shot per label set, image<->text retrieval."""
    from clipdistill.harness.mieb import run_mieb

    spec = load_section(params, "eval")
    summary = run_mieb(model, data / (split or spec.split), out, spec.batch_size)
    shown = [f"{k} {v['top1']:.3f}" for k, v in summary["zeroshot"].items()]
    say(f"mteb {model}: " + ", ".join(shown + [f"{k} R@1 {v['R@1']:.3f}" for k, v in summary["retrieval"].items()]))


def push_cmd(remote: RemoteOpt = None, project: ProjectOpt = Path(".")) -> None:
    """Upload every tracked artifact to a DVC remote."""
    from clipdistill.share import push

    say(push(project, remote).strip() or "pushed")


def pull_cmd(remote: RemoteOpt = None, project: ProjectOpt = Path(".")) -> None:
    """Fetch artifacts from a DVC remote, check them out, then `sync` Snakemake's timestamps."""
    from clipdistill.share import pull, sync

    pull(project, remote)
    sync(project)
    say("pulled; DVC and Snakemake agree that nothing needs to run")


def sync_cmd(project: ProjectOpt = Path(".")) -> None:
    """Make DVC and Snakemake agree: after a killed Snakemake run, `dvc repro`, `dvc pull` or `dvc checkout`."""
    from clipdistill.state import sync

    done = sync(project)
    recorded = f"recorded {len(done.committed)} finished stage(s) in dvc.lock; " if done.committed else ""
    if not done.pending:
        return say(f"{recorded}in sync: dvc.lock matches every artifact, Snakemake has nothing to run")
    more = f" (+{len(done.pending) - 5} more)" if len(done.pending) > 5 else ""
    say(f"{recorded}{len(done.pending)} stage(s) still to run, for both runners: {', '.join(done.pending[:5])}{more}")


def params_check(params: ParamsOpt = PARAMS) -> None:
    """Validate every section of a params file."""
    from clipdistill.params import load_params

    load_params(params)
    say(f"{params}: ok")


def params_schema(out: Annotated[Optional[Path], opt("file to write (default stdout)")] = None) -> None:
    """Print (or write) the JSON Schema of params.yaml."""
    from clipdistill.io import atomic_file
    from clipdistill.params import json_schema_text

    if out is None:
        sys.stdout.write(json_schema_text())
        return
    with atomic_file(out) as fh:
        fh.write(json_schema_text())
