"""The `clipdistill` command: one subcommand per stage. Snakemake and DVC call only this."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from clipdistill.io import ClipdistillError

app = typer.Typer(help="Distil CLIP into small students and judge them inside a LLaVA-style VLM.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="The synthetic world and dataset formats.", no_args_is_help=True)
params_app = typer.Typer(help="params.yaml: validation and JSON Schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")
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
def _global_options(log: Annotated[Optional[Path], typer.Option(help="also write stderr to this file")] = None) -> None:
    if log is not None:
        sys.stderr = _Tee(sys.stderr, log)


ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read the stage's section from")]


@data_app.command("synth")
def data_synth(split: Annotated[str, typer.Option(help="split name from params data.splits")],
               out: Annotated[Path, typer.Option(help="output directory of the split")],
               params: ParamsOpt = Path("params.yaml")) -> None:
    """Render one split of the synthetic world (images, CSV, shards, LLaVA JSON, VQAv2 JSON)."""
    from clipdistill.data.synth import synthesize
    from clipdistill.params import load_section

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
