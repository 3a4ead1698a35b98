# A TF-Hub-style SavedModel of the dumped model (google/elmo/3's signatures), for code
# written against TF-Hub's ELMo. Not part of `all`: ask for it with
# `snakemake --cores all export_hub` (or the path results/hub).


rule export_hub:
    """Write results/model as a TensorFlow SavedModel with the default and tokens signatures."""
    input:
        weights=rules.dump_weights.output.weights,
        options=rules.dump_weights.output.options,
        vocab=rules.dump_weights.output.vocab,
        code=sources("export_hub"),
    output:
        directory("results/hub"),
    params:
        model_dir=lambda wc, input: os.path.dirname(input.options),
    log:
        "logs/export_hub/export_hub.log",
    benchmark:
        "results/benchmarks/export_hub/export_hub.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.export_hub --model {params.model_dir} --out {output} "
        "--log {log}"
