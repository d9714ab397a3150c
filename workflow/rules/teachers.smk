# Teachers (trained here or imported), their CLIP evaluation, and the feature store.

TEACHER_CODE = ["src/clipdistill/models", "src/clipdistill/teachers", "src/clipdistill/losses"]


rule teacher_train:
    input:
        TEACHER_CODE,
        "results/data/pretrain",
    output:
        directory("results/teachers/{teacher}"),
    params:
        spec=lambda w: config["teachers"][w.teacher],
    priority: 10  # the longest chain starts here: start the teachers first
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/teacher_train/{teacher}.log",
    benchmark:
        "results/benchmarks/teacher_train/{teacher}.tsv"
    shell:
        "clipdistill --log {log} teacher train --params params.yaml --name {wildcards.teacher}"
        " --data results/data --out results/teachers/{wildcards.teacher}"


rule teacher_eval:
    input:
        "src/clipdistill/evaluate",
        "results/teachers/{teacher}",
        f"results/data/{config['eval']['split']}",
    output:
        "results/teacher_eval/{teacher}/metrics.json",
    params:
        spec=config["eval"],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/teacher_eval/{teacher}.log",
    benchmark:
        "results/benchmarks/teacher_eval/{teacher}.tsv"
    shell:
        "clipdistill --log {log} eval clip --params params.yaml --model results/teachers/{wildcards.teacher}"
        " --data results/data --out results/teacher_eval/{wildcards.teacher}/metrics.json"


rule features_extract:
    input:
        "src/clipdistill/features",
        "results/teachers/{teacher}",
        f"results/data/{config['features']['split']}",
    output:
        directory("results/features/{teacher}"),
    params:
        spec=config["features"],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/features_extract/{teacher}.log",
    benchmark:
        "results/benchmarks/features_extract/{teacher}.tsv"
    shell:
        "clipdistill --log {log} features extract --params params.yaml"
        " --teacher results/teachers/{wildcards.teacher} --data results/data"
        " --out results/features/{wildcards.teacher}"
