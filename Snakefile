# clipdistill study workflow. `snakemake -c2` runs it; dvc.yaml describes the same stages.
# Every rule calls the `clipdistill` CLI with the same command, deps and outs as its DVC
# stage (tests/test_dag.py proves the two agree).
from snakemake.utils import min_version, validate

min_version("9.0")

PARAMS = "params.yaml"


configfile: PARAMS


validate(config, "workflow/schemas/params.schema.json", set_default=False)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/vqa.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/state.smk"


rule all:
    default_target: True
    input:
        expand("results/data/{split}", split=config["data"]["splits"]),
        rules.data_preview.output,
        expand("results/teacher_eval/{teacher}/metrics.json", teacher=config["teachers"]),
        expand("results/features/{teacher}", teacher=config["teachers"]),
        expand("results/student_eval/{run}/metrics.json", run=KD_RUNS + BASELINE_EVALS),
        expand("results/vqa_metrics/teachers/{teacher}.json", teacher=config["teachers"]),
        expand("results/vqa_metrics/students/{run}.json", run=KD_RUNS + BASELINE_RUNS),
        "results/vqa_metrics/blind.json",
        "results/report",
