rule dump_weights:
    """Write weights.hdf5, options.json, vocab.txt, vocab_embedding.hdf5 (bilm-tf format)."""
    input:
        weights=rules.train_bilm.output.weights,
        options=rules.train_bilm.output.options,
        vocab=rules.vocab.output.vocab,
        code=sources("dump"),
    output:
        weights="results/model/weights.hdf5",
        options="results/model/options.json",
        vocab="results/model/vocab.txt",
        vocab_embedding="results/model/vocab_embedding.hdf5",
    params:
        settings=as_json(
            {"corpus": {"language": config["corpus"]["language"]}, "segment": config["segment"]}
        ),
        bilm_dir=lambda wc, input: os.path.dirname(input.options),
        out_dir=lambda wc, output: os.path.dirname(output.options),
    log:
        "logs/dump_weights/dump_weights.log",
    benchmark:
        "results/benchmarks/dump_weights/dump_weights.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.dump --bilm-dir {params.bilm_dir} --vocab {input.vocab} "
        "--out-dir {params.out_dir} --settings {params.settings:q} --log {log}"
