# Students: one distillation run per (teacher, student, method, seed), and its evaluation.

GRID = config["distill"]["grid"]


wildcard_constraints:
    teacher="[A-Za-z0-9_]+",
    student="[A-Za-z0-9_]+",
    method="[A-Za-z0-9_]+",
    seed="[0-9]+",


rule distill:
    input:
        "src/clipdistill/distill",
        "src/clipdistill/losses",
        "results/teachers/{teacher}",
        "results/features/{teacher}",
        f"results/data/{config['features']['split']}",
    output:
        directory("results/students/{teacher}/{student}/{method}/{seed}"),
    params:
        train=config["distill"]["train"],
        student=lambda w: config["distill"]["students"][w.student],
        method=lambda w: config["distill"]["methods"][w.method],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/distill/{teacher}/{student}/{method}/{seed}.log",
    benchmark:
        "results/benchmarks/distill/{teacher}/{student}/{method}/{seed}.tsv"
    shell:
        "clipdistill --log {log} distill --params params.yaml --teacher-name {wildcards.teacher}"
        " --student {wildcards.student} --method {wildcards.method} --seed {wildcards.seed}"
        " --teacher results/teachers/{wildcards.teacher} --features results/features/{wildcards.teacher}"
        f" --data results/data/{config['features']['split']}"
        " --out results/students/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}"


rule student_eval:
    input:
        "src/clipdistill/evaluate",
        "results/students/{teacher}/{student}/{method}/{seed}",
        "results/teachers/{teacher}",
        f"results/data/{config['eval']['split']}",
    output:
        "results/student_eval/{teacher}/{student}/{method}/{seed}/metrics.json",
    params:
        spec=config["eval"],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/student_eval/{teacher}/{student}/{method}/{seed}.log",
    benchmark:
        "results/benchmarks/student_eval/{teacher}/{student}/{method}/{seed}.tsv"
    shell:
        "clipdistill --log {log} eval clip --params params.yaml"
        " --model results/students/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}"
        " --teacher results/teachers/{wildcards.teacher} --data results/data"
        " --out results/student_eval/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}/metrics.json"
