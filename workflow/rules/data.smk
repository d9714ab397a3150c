# The synthetic world: every split in every standard format, and a preview picture.


rule data_synth:
    input:
        "src/clipdistill/data",
    output:
        directory("results/data"),
    params:
        section=config["data"],
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/data_synth.log",
    benchmark:
        "results/benchmarks/data_synth.tsv"
    shell:
        "clipdistill --log {log} data synth --params params.yaml --out results/data"


rule data_preview:
    input:
        "results/data",
    output:
        "results/preview/scenes.png",
    conda:
        "../envs/clipdistill.yaml"
    log:
        "logs/data_preview.log",
    benchmark:
        "results/benchmarks/data_preview.tsv"
    shell:
        "clipdistill --log {log} data preview --data results/data --split vqa_eval"
        " --split distill_shifted --n 6 --out results/preview/scenes.png"
