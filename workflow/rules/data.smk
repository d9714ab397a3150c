# The synthetic world: one job per split (so consumers rerun only when their split
# changes), in every standard format, and a preview picture.

DATA_SHARED = {k: v for k, v in config["data"].items() if k != "splits"}


rule data_synth:
    input:
        "src/clipdistill/data",
    output:
        directory("results/data/{split}"),
    params:
        shared=DATA_SHARED,
        split=lambda w: config["data"]["splits"][w.split],
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/data_synth/{split}.log",
    benchmark:
        "results/benchmarks/data_synth/{split}.tsv"
    shell:
        "clipdistill --log {log} data synth --params params.yaml --split {wildcards.split}"
        " --out results/data/{wildcards.split}"


rule data_preview:
    input:
        "results/data/vqa_eval",
        "results/data/distill_shifted",
    output:
        report("results/preview/scenes.png", caption="../report/preview.rst", category="Data"),
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/data_preview.log",
    benchmark:
        "results/benchmarks/data_preview.tsv"
    shell:
        "clipdistill --log {log} data preview --data results/data --split vqa_eval"
        " --split distill_shifted --n 6 --out results/preview/scenes.png"
