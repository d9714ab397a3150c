# LLaVA-style VQA for every encoder: each student, each teacher (reference), a blind baseline.
# All of them start from the one language model built by vqa_lm.


rule vqa_lm:
    input:
        stage_inputs("vqa_lm"),
    output:
        *stage_outputs("vqa_lm"),
    wildcard_constraints:
        **stage_constraints("vqa_lm"),
    params:
        cmd=stage_command("vqa_lm"),
        values=stage_params("vqa_lm"),
    threads: 1
    resources:
        gpu=stage_gpus("vqa_lm"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("vqa_lm"),
    benchmark:
        stage_benchmark("vqa_lm")
    shell:
        "{params.cmd}"


rule vqa_teacher:
    input:
        stage_inputs("vqa_teacher"),
    output:
        *stage_outputs("vqa_teacher"),
    wildcard_constraints:
        **stage_constraints("vqa_teacher"),
    params:
        cmd=stage_command("vqa_teacher"),
        values=stage_params("vqa_teacher"),
    threads: 1
    resources:
        gpu=stage_gpus("vqa_teacher"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("vqa_teacher"),
    benchmark:
        stage_benchmark("vqa_teacher")
    shell:
        "{params.cmd}"


rule vqa_student:
    input:
        stage_inputs("vqa_student"),
    output:
        *stage_outputs("vqa_student"),
    wildcard_constraints:
        **stage_constraints("vqa_student"),
    params:
        cmd=stage_command("vqa_student"),
        values=stage_params("vqa_student"),
    threads: 1
    resources:
        gpu=stage_gpus("vqa_student"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("vqa_student"),
    benchmark:
        stage_benchmark("vqa_student")
    shell:
        "{params.cmd}"


rule vqa_blind:
    input:
        stage_inputs("vqa_blind"),
    output:
        *stage_outputs("vqa_blind"),
    wildcard_constraints:
        **stage_constraints("vqa_blind"),
    params:
        cmd=stage_command("vqa_blind"),
        values=stage_params("vqa_blind"),
    threads: 1
    resources:
        gpu=stage_gpus("vqa_blind"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("vqa_blind"),
    benchmark:
        stage_benchmark("vqa_blind")
    shell:
        "{params.cmd}"


# Every VLM on each further evaluation set (vqa.eval_splits after the first): none by default.
for _stage in [stage.name for stage in ST.STAGES if stage.name.startswith("vqa_score_")]:

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
        resources:
            gpu=stage_gpus(_stage),
        conda:
            "../envs/clipdistill.yaml"
        log:
            stage_log(_stage),
        benchmark:
            stage_benchmark(_stage)
        shell:
            "{params.cmd}"
