# clipdistill study workflow. `snakemake -c2` runs it. Every rule is built from the stage table
# (src/clipdistill/stages.py), which also generates dvc.yaml: the same command, deps and outs
# in both runners (tests/test_dag.py proves the two agree).
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
include: "workflow/rules/harness.smk"
include: "workflow/rules/state.smk"


rule all:
    default_target: True
    input:
        [path for stage in ST.STAGES for path in stage_targets(stage.name)],
