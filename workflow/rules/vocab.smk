rule vocab:
    """Count tokens over the training shards; <S>, </S>, <UNK> first, then by count."""
    input:
        shards=rules.segment.output.shards,
        code=sources("vocab"),
    output:
        vocab="results/vocab/vocab.txt",
        counts="results/vocab/counts.tsv",
        stats="results/vocab/stats.json",
    params:
        settings=as_json(config["vocab"]),
        out_dir=lambda wc, output: os.path.dirname(output.stats),
    log:
        "logs/vocab/vocab.log",
    benchmark:
        "results/benchmarks/vocab/vocab.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.vocab --settings {params.settings:q} --shards {input.shards} "
        "--out-dir {params.out_dir} --log {log}"
