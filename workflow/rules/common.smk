# The stage table (src/clipdistill/stages.py) builds every rule: its inputs (code files, data,
# results), outputs, command, params and log. Read from this project's src/ (the same code
# the rules run).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from clipdistill import stages as ST  # noqa: E402


def stage_outputs(name):
    """The stage's outputs (directories marked), as Snakemake patterns."""
    return [directory(o.path) if o.directory else o.path for o in ST.BY_NAME[name].outputs]


def stage_inputs(name):
    return lambda wildcards: ST.snakemake_inputs(ST.BY_NAME[name], config, dict(wildcards))


def stage_command(name):
    return lambda wildcards: ST.snakemake_command(ST.BY_NAME[name], config, dict(wildcards))


def stage_params(name):
    return lambda wildcards: ST.params_values(ST.BY_NAME[name], config, dict(wildcards))


def stage_constraints(name):
    return ST.wildcard_constraints(ST.BY_NAME[name], config)


def stage_log(name):
    return ST.BY_NAME[name].log


def stage_gpus(name):
    """GPUs per job: only where the stage runs models and params say runtime.device: cuda."""
    return lambda wildcards: ST.gpus(ST.BY_NAME[name], config)


def stage_benchmark(name):
    return ST.benchmark(ST.BY_NAME[name])


def stage_targets(name):
    return ST.targets(ST.BY_NAME[name], config)
