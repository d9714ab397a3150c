# Optional: the standard harnesses (lmms-eval on every VLM, mteb/MIEB on every teacher and
# student) once per split listed in params eval.harnesses. With the lists empty (the default)
# these rules make no jobs and `all` asks for nothing of theirs.
HARNESS_STAGES = [stage.name for stage in ST.STAGES if stage.name.startswith("harness_")]

for _stage in HARNESS_STAGES:

    rule:
        name:
            _stage
        input:
            stage_inputs(_stage),
        output:
            *stage_outputs(_stage),
        wildcard_constraints:
            **stage_constraints(_stage),
        params:
            cmd=stage_command(_stage),
            values=stage_params(_stage),
        threads: 1
        conda:
            "../envs/clipdistill.yaml"
        log:
            stage_log(_stage),
        benchmark:
            stage_benchmark(_stage)
        shell:
            "{params.cmd}"
