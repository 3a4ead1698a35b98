rule embed:
    """Embed the held-out text (or embed.inputs) into a Parquet dataset."""
    input:
        texts=config["embed"]["inputs"] or [rules.segment.output.heldout],
        weights=rules.dump_weights.output.weights,
        options=rules.dump_weights.output.options,
        vocab=rules.dump_weights.output.vocab,
        code=sources("embed"),
    output:
        directory("results/embeddings"),
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
        "logs/embed/embed.log",
    benchmark:
        "benchmarks/embed/embed.tsv"
    conda:
        GPU_ENV
    shell:
        "python -m elmo_pipeline.embed --settings {params.settings:q} --model {params.model_dir} "
        "{params.inputs} --out-dir {output} --threads {threads} --log {log}"
