# The study report: one table, rank correlations with bootstrap CIs, plots.

rule report:
    input:
        "src/clipdistill/report",
        "results/data/vqa_eval",
        expand("results/teacher_eval/{teacher}/metrics.json", teacher=config["teachers"]),
        expand("results/teachers/{teacher}", teacher=config["teachers"]),
        expand("results/student_eval/{run}/metrics.json", run=KD_RUNS + BASELINE_EVALS),
        expand("results/students/{run}", run=KD_RUNS + BASELINE_RUNS),
        expand("results/vqa_metrics/teachers/{teacher}.json", teacher=config["teachers"]),
        expand("results/vqa_metrics/students/{run}.json", run=KD_RUNS + BASELINE_RUNS),
        "results/vqa_metrics/blind.json",
        expand("results/vqa/teachers/{teacher}", teacher=config["teachers"]),
        expand("results/vqa/students/{run}", run=KD_RUNS + BASELINE_RUNS),
        "results/vqa/blind",
    output:
        report(
            directory("results/report"),
            patterns=["{name}.png", "{name}.csv"],
            caption="../report/study.rst",
            category="Study",
        ),
    params:
        spec=config["report"],
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    shell:
        "clipdistill --log {log} report --params params.yaml --results results"
        " --vqa-eval results/data/vqa_eval --out results/report"
