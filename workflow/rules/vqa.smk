# LLaVA-style VQA for every encoder: each student, each teacher (reference), a blind baseline.
# All of them start from the one language model built by vqa_lm.


rule vqa_lm:
    input:
        "src/clipdistill/vqa",
        "results/data/vqa_train",
    output:
        directory("results/vqa/lm"),
    params:
        lm=config["vqa"]["lm"],
        pretrain=config["vqa"].get("lm_pretrain"),
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/vqa/lm.log",
    benchmark:
        "results/benchmarks/vqa/lm.tsv"
    shell:
        "clipdistill --log {log} vqa lm --params params.yaml --data results/data --out results/vqa/lm"


rule vqa_teacher:
    input:
        "src/clipdistill/vqa",
        "results/teachers/{teacher}",
        "results/vqa/lm",
        "results/data/vqa_train",
        "results/data/vqa_eval",
    output:
        directory("results/vqa/teachers/{teacher}"),
        metrics="results/vqa_metrics/teachers/{teacher}.json",
    params:
        spec=config["vqa"],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/vqa/teachers/{teacher}.log",
    benchmark:
        "results/benchmarks/vqa/teachers/{teacher}.tsv"
    shell:
        "clipdistill --log {log} vqa run --params params.yaml --encoder results/teachers/{wildcards.teacher}"
        " --data results/data --lm results/vqa/lm --out results/vqa/teachers/{wildcards.teacher}"
        " --metrics results/vqa_metrics/teachers/{wildcards.teacher}.json"


rule vqa_student:
    input:
        "src/clipdistill/vqa",
        "results/students/{teacher}/{student}/{method}/{seed}",
        "results/vqa/lm",
        "results/data/vqa_train",
        "results/data/vqa_eval",
    output:
        directory("results/vqa/students/{teacher}/{student}/{method}/{seed}"),
        metrics="results/vqa_metrics/students/{teacher}/{student}/{method}/{seed}.json",
    wildcard_constraints:
        teacher=one_of(config["teachers"]),
        method=one_of(GRID["methods"]),
    params:
        spec=config["vqa"],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/vqa/students/{teacher}/{student}/{method}/{seed}.log",
    benchmark:
        "results/benchmarks/vqa/students/{teacher}/{student}/{method}/{seed}.tsv"
    shell:
        "clipdistill --log {log} vqa run --params params.yaml"
        " --encoder results/students/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}"
        " --data results/data --lm results/vqa/lm"
        " --out results/vqa/students/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}"
        " --metrics results/vqa_metrics/students/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}.json"


rule vqa_baseline:
    input:
        "src/clipdistill/vqa",
        "results/students/none/{student}/{method}/{seed}",
        "results/vqa/lm",
        "results/data/vqa_train",
        "results/data/vqa_eval",
    output:
        directory("results/vqa/students/none/{student}/{method}/{seed}"),
        metrics="results/vqa_metrics/students/none/{student}/{method}/{seed}.json",
    wildcard_constraints:
        method=one_of(GRID["baselines"]),
    params:
        spec=config["vqa"],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/vqa/students/none/{student}/{method}/{seed}.log",
    benchmark:
        "results/benchmarks/vqa/baselines/{student}/{method}/{seed}.tsv"
    shell:
        "clipdistill --log {log} vqa run --params params.yaml"
        " --encoder results/students/none/{wildcards.student}/{wildcards.method}/{wildcards.seed}"
        " --data results/data --lm results/vqa/lm"
        " --out results/vqa/students/none/{wildcards.student}/{wildcards.method}/{wildcards.seed}"
        " --metrics results/vqa_metrics/students/none/{wildcards.student}/{wildcards.method}/{wildcards.seed}.json"


rule vqa_blind:
    input:
        "src/clipdistill/vqa",
        "results/vqa/lm",
        "results/data/vqa_train",
        "results/data/vqa_eval",
    output:
        directory("results/vqa/blind"),
        metrics="results/vqa_metrics/blind.json",
    params:
        spec=config["vqa"],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/vqa/blind.log",
    benchmark:
        "results/benchmarks/vqa/blind.tsv"
    shell:
        "clipdistill --log {log} vqa run --params params.yaml --encoder blind --data results/data --lm results/vqa/lm"
        " --out results/vqa/blind --metrics results/vqa_metrics/blind.json"
