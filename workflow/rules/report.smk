# The study report: one table, rank correlations with bootstrap CIs, plots.


rule report:
    input:
        stage_inputs("report"),
    output:
        report(
            stage_outputs("report")[0],
            patterns=["{name}.png", "{name}.csv"],
            caption="../report/study.rst",
            category="Study",
        ),
    params:
        cmd=stage_command("report"),
        values=stage_params("report"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("report"),
    benchmark:
        stage_benchmark("report")
    shell:
        "{params.cmd}"
