rule word2vec:
    """gensim word2vec on the shards; init.hdf5 row i is vocab line i."""
    input:
        shards=rules.segment.output.shards,
        vocab=rules.vocab.output.vocab,
        code=sources("word2vec"),
    output:
        kv="results/word2vec/vectors.kv",
        txt="results/word2vec/vectors.txt",
        init="results/word2vec/init.hdf5",
        stats="results/word2vec/stats.json",
    params:
        settings=as_json(word2vec_settings()),
        out_dir=lambda wc, output: os.path.dirname(output.init),
    threads: workflow.cores
    log:
        "logs/word2vec/word2vec.log",
    benchmark:
        "results/benchmarks/word2vec/word2vec.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.word2vec --settings {params.settings:q} --shards {input.shards} "
        "--vocab {input.vocab} --out-dir {params.out_dir} --threads {threads} --log {log}"
