# The synthetic world: one job per split (so consumers rerun only when their split
# changes), in every standard format, and a preview picture.


rule data_synth:
    input:
        stage_inputs("data_synth"),
    output:
        stage_outputs("data_synth"),
    wildcard_constraints:
        **stage_constraints("data_synth"),
    params:
        cmd=stage_command("data_synth"),
        values=stage_params("data_synth"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("data_synth"),
    benchmark:
        stage_benchmark("data_synth")
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
