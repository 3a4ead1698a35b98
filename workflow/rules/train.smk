rule train_bilm:
    """Train the biLM on the GPU (CPU when none); resumes from bilm/checkpoints/."""
    input:
        unpack(
            lambda wc: {"init": rules.word2vec.output.init} if token_init_from_word2vec() else {}
        ),
        start=starting_model_files(),
        shards=rules.segment.output.shards,
        heldout=rules.segment.output.heldout,
        vocab=rules.vocab.output.vocab,
        vocab_stats=rules.vocab.output.stats,
        counts=rules.vocab.output.counts,
        code=sources("train"),
    output:
        weights="results/bilm/model.weights.h5",
        options="results/bilm/train_options.json",
        history="results/bilm/history.csv",
    params:
        settings=as_json(config["bilm"]),
        out_dir=lambda wc, output: os.path.dirname(output.options),
        init=lambda wc, input: f"--init {input.init}" if "init" in input.keys() else "",
        launcher=training_launcher,
    threads: workflow.cores
    resources:
        gpu=1,
    log:
        "logs/train_bilm/train_bilm.log",
    benchmark:
        "results/benchmarks/train_bilm/train_bilm.tsv"
    conda:
        GPU_ENV
    shell:
        "{params.launcher}python -m elmo_pipeline.train --settings {params.settings:q} --vocab {input.vocab} "
        "--vocab-stats {input.vocab_stats} --shards {input.shards} --heldout {input.heldout} "
        "{params.init} --counts {input.counts} --out-dir {params.out_dir} --threads {threads} "
        "--log {log}"
