# Students: one run per (teacher, student, method, seed) of the grid; the teacher-free baselines
# are the same stages with teacher `none` (trained once, evaluated against every teacher for CKA).


rule distill:
    input:
        stage_inputs("distill"),
    output:
        *stage_outputs("distill"),
    wildcard_constraints:
        **stage_constraints("distill"),
    params:
        cmd=stage_command("distill"),
        values=stage_params("distill"),
    threads: 1
    resources:
        gpu=stage_gpus("distill"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("distill"),
    benchmark:
        stage_benchmark("distill")
    shell:
        "{params.cmd}"


rule student_eval:
    input:
        stage_inputs("student_eval"),
    output:
        *stage_outputs("student_eval"),
    wildcard_constraints:
        **stage_constraints("student_eval"),
    params:
        cmd=stage_command("student_eval"),
        values=stage_params("student_eval"),
    threads: 1
    resources:
        gpu=stage_gpus("student_eval"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("student_eval"),
    benchmark:
        stage_benchmark("student_eval")
    shell:
        "{params.cmd}"
