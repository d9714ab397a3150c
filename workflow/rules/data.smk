# The data splits, synthetic or imported: one job per split (so consumers rerun only when their split
# changes), in every standard format, and a preview picture.


rule data_prepare:
    input:
        stage_inputs("data_prepare"),
    output:
        stage_outputs("data_prepare"),
    wildcard_constraints:
        **stage_constraints("data_prepare"),
    params:
        cmd=stage_command("data_prepare"),
        values=stage_params("data_prepare"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("data_prepare"),
    benchmark:
        stage_benchmark("data_prepare")
    shell:
        "{params.cmd}"


rule data_preview:
    input:
        stage_inputs("data_preview"),
    output:
        report(stage_outputs("data_preview")[0], caption="../report/preview.rst", category="Data"),
    params:
        cmd=stage_command("data_preview"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("data_preview"),
    benchmark:
        stage_benchmark("data_preview")
    shell:
        "{params.cmd}"
