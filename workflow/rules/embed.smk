# Embedding runs as embed.n_shards independent jobs over contiguous ranges of the input
# lines (override with `--set-scatter embed=N`), gathered into one Parquet dataset. With
# stateless embedding (the default) the rows do not depend on N.


scattergather:
    embed=config["embed"]["n_shards"],


rule embed_shard:
    """Embed one shard (K-of-N lines) of the held-out text (or of embed.inputs)."""
    input:
        texts=embed_input_files(),
        weights=rules.dump_weights.output.weights,
        options=rules.dump_weights.output.options,
        vocab=rules.dump_weights.output.vocab,
        code=sources("embed"),
    output:
        temp(directory("results/embeddings.shards/{scatteritem}")),
    params:
        settings=as_json(
            {
                "embed": config["embed"],
                "corpus": config["corpus"],
                "segment": config["segment"],
                "backend": config["bilm"]["backend"],
            }
        ),
        inputs=embed_input_args,
        model_dir=lambda wc, input: os.path.dirname(input.options),
    threads: workflow.cores
    resources:
        gpu=1,
    log:
        "logs/embed/shard-{scatteritem}.log",
    benchmark:
        "results/benchmarks/embed/shard-{scatteritem}.tsv"
    conda:
        GPU_ENV
    shell:
        "python -m elmo_pipeline.embed --settings {params.settings:q} --model {params.model_dir} "
        "{params.inputs} --shard {wildcards.scatteritem} --out-dir {output} "
        "--threads {threads} --log {log}"


rule embed:
    """Gather the embedded shards into one Parquet dataset (ids renumbered, stats merged)."""
    input:
        shards=gather.embed("results/embeddings.shards/{scatteritem}"),
        code=sources("embed"),
    output:
        directory("results/embeddings"),
    log:
        "logs/embed/embed.log",
    benchmark:
        "results/benchmarks/embed/embed.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.embed.gather --out-dir {output} --log {log} {input.shards}"
