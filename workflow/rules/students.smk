# Students: one KD run per (teacher, student, method, seed); one teacher-free baseline run per
# (student, baseline, seed), evaluated against every teacher (for CKA); their evaluations.

wildcard_constraints:
    student="[A-Za-z0-9_]+",
    seed="[0-9]+",


rule distill:
    input:
        "src/clipdistill/distill",
        "src/clipdistill/losses",
        "results/teachers/{teacher}",
        "results/features/{teacher}",
        f"results/data/{DISTILL_SPLIT}",
    output:
        directory("results/students/{teacher}/{student}/{method}/{seed}"),
    wildcard_constraints:
        teacher=one_of(config["teachers"]),
        method=one_of(GRID["methods"]),
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
        f" --data results/data/{DISTILL_SPLIT}"
        " --out results/students/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}"


rule distill_baseline:
    input:
        "src/clipdistill/distill",
        "src/clipdistill/losses",
        f"results/data/{DISTILL_SPLIT}",
    output:
        directory("results/students/none/{student}/{method}/{seed}"),
    wildcard_constraints:
        method=one_of(GRID["baselines"]),
    params:
        train=config["distill"]["train"],
        student=lambda w: config["distill"]["students"][w.student],
        method=lambda w: config["distill"]["methods"][w.method],
    threads: 1
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/distill/none/{student}/{method}/{seed}.log",
    benchmark:
        "results/benchmarks/distill_baseline/{student}/{method}/{seed}.tsv"
    shell:
        "clipdistill --log {log} distill --params params.yaml --teacher-name none"
        " --student {wildcards.student} --method {wildcards.method} --seed {wildcards.seed}"
        f" --data results/data/{DISTILL_SPLIT}"
        " --out results/students/none/{wildcards.student}/{wildcards.method}/{wildcards.seed}"


rule student_eval:
    input:
        "src/clipdistill/evaluate",
        "results/students/{teacher}/{student}/{method}/{seed}",
        "results/teachers/{teacher}",
        f"results/data/{config['eval']['split']}",
    output:
        "results/student_eval/{teacher}/{student}/{method}/{seed}/metrics.json",
    wildcard_constraints:
        teacher=one_of(config["teachers"]),
        method=one_of(GRID["methods"]),
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


rule student_eval_baseline:
    input:
        "src/clipdistill/evaluate",
        "results/students/none/{student}/{method}/{seed}",
        "results/teachers/{teacher}",
        f"results/data/{config['eval']['split']}",
    output:
        "results/student_eval/{teacher}/{student}/{method}/{seed}/metrics.json",
    wildcard_constraints:
        teacher=one_of(config["teachers"]),
        method=one_of(GRID["baselines"]),
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
        " --model results/students/none/{wildcards.student}/{wildcards.method}/{wildcards.seed}"
        " --teacher results/teachers/{wildcards.teacher} --data results/data"
        " --out results/student_eval/{wildcards.teacher}/{wildcards.student}/{wildcards.method}/{wildcards.seed}/metrics.json"
