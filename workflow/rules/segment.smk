rule segment:
    """Normalise, split into sentences, tokenise (jieba / regex / whitespace), shard."""
    input:
        corpus=corpus_files(),
        user_dict=lambda wc: config["segment"]["user_dict"] or [],
        code=sources("segment"),
    output:
        shards=SHARDS,
        heldout="results/corpus/heldout.txt",
        stats="results/corpus/stats.json",
    params:
        settings=as_json({"corpus": config["corpus"], "segment": config["segment"]}),
        out_dir=lambda wc, output: os.path.dirname(output.stats),
    threads: workflow.cores
    log:
        "logs/segment/segment.log",
    benchmark:
        "benchmarks/segment/segment.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.segment --settings {params.settings:q} "
        "--out-dir {params.out_dir} --threads {threads} --log {log}"
