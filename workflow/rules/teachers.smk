# Teachers (trained here or imported), their CLIP evaluation, and the feature store.


rule teacher_train:
    input:
        stage_inputs("teacher_train"),
    output:
        *stage_outputs("teacher_train"),
    wildcard_constraints:
        **stage_constraints("teacher_train"),
    params:
        cmd=stage_command("teacher_train"),
        values=stage_params("teacher_train"),
    priority: 10  # the longest chain starts here: start the teachers first
    threads: 1
    resources:
        gpu=stage_gpus("teacher_train"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("teacher_train"),
    benchmark:
        stage_benchmark("teacher_train")
    shell:
        "{params.cmd}"


rule teacher_eval:
    input:
        stage_inputs("teacher_eval"),
    output:
        *stage_outputs("teacher_eval"),
    wildcard_constraints:
        **stage_constraints("teacher_eval"),
    params:
        cmd=stage_command("teacher_eval"),
        values=stage_params("teacher_eval"),
    threads: 1
    resources:
        gpu=stage_gpus("teacher_eval"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("teacher_eval"),
    benchmark:
        stage_benchmark("teacher_eval")
    shell:
        "{params.cmd}"


rule features_extract:
    input:
        stage_inputs("features_extract"),
    output:
        *stage_outputs("features_extract"),
    wildcard_constraints:
        **stage_constraints("features_extract"),
    params:
        cmd=stage_command("features_extract"),
        values=stage_params("features_extract"),
    threads: 1
    resources:
        gpu=stage_gpus("features_extract"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        stage_log("features_extract"),
    benchmark:
        stage_benchmark("features_extract")
    shell:
        "{params.cmd}"
