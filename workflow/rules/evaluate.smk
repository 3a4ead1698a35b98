rule evaluate:
    """Held-out perplexity vs unigram, POS probes and classification (ELMo vs word2vec,
    with intervals), polysemy."""
    input:
        unpack(evaluate_labelled_input),
        weights="results/model/weights.hdf5",
        options="results/model/options.json",
        vocab="results/model/vocab.txt",
        history="results/bilm/history.csv",
        heldout="results/corpus/heldout.txt",
        shards=SHARDS,
        word2vec="results/word2vec/vectors.kv",
        code=sources("evaluate", "plots", "bilm", "segment", "vocab"),
    output:
        perplexity=report(
            "results/eval/perplexity.json",
            caption="../report/perplexity.rst",
            category="Evaluation",
        ),
        classification=report(
            "results/eval/classification.json",
            caption="../report/classification.rst",
            category="Evaluation",
        ),
        pos=report(
            "results/eval/pos.json",
            caption="../report/pos.rst",
            category="Evaluation",
        ),
        polysemy="results/eval/polysemy.json",
        polysemy_png=report(
            "results/eval/polysemy.png",
            caption="../report/polysemy.rst",
            category="Evaluation",
        ),
    params:
        settings=as_json({"evaluate": config["evaluate"], "backend": config["bilm"]["backend"]}),
        model_dir=lambda wc, input: os.path.dirname(input.options),
        out_dir=lambda wc, output: os.path.dirname(output.perplexity),
    threads: workflow.cores
    resources:
        gpu=1,
    log:
        "logs/evaluate/evaluate.log",
    benchmark:
        "results/benchmarks/evaluate/evaluate.tsv"
    conda:
        GPU_ENV
    shell:
        "python -m elmo_pipeline.evaluate --settings {params.settings:q} "
        "--model {params.model_dir} --history {input.history} --heldout {input.heldout} "
        "--shards {input.shards} --word2vec {input.word2vec} --out-dir {params.out_dir} "
        "--log {log}"


rule plot_training:
    """Training curve: held-out perplexity and tokens/s over steps."""
    input:
        history="results/bilm/history.csv",
        code=sources("plots"),
    output:
        report(
            "results/plots/training_curve.png",
            caption="../report/training_curve.rst",
            category="Training",
        ),
    log:
        "logs/plot_training/plot_training.log",
    benchmark:
        "results/benchmarks/plot_training/plot_training.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.plots training --history {input.history} --out {output} "
        "--log {log}"


rule plot_corpus:
    """Corpus statistics: sentence lengths and token frequencies."""
    input:
        shards=SHARDS,
        heldout="results/corpus/heldout.txt",
        code=sources("plots"),
    output:
        report(
            "results/plots/corpus_stats.png",
            caption="../report/corpus_stats.rst",
            category="Corpus",
        ),
    log:
        "logs/plot_corpus/plot_corpus.log",
    benchmark:
        "results/benchmarks/plot_corpus/plot_corpus.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.plots corpus --shards {input.shards} "
        "--heldout {input.heldout} --out {output} --log {log}"


rule plot_evaluation:
    """Evaluation summary: classification scores and perplexities."""
    input:
        perplexity="results/eval/perplexity.json",
        classification="results/eval/classification.json",
        pos="results/eval/pos.json",
        code=sources("plots"),
    output:
        report(
            "results/plots/evaluation.png",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
    log:
        "logs/plot_evaluation/plot_evaluation.log",
    benchmark:
        "results/benchmarks/plot_evaluation/plot_evaluation.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.plots evaluation --perplexity {input.perplexity} "
        "--classification {input.classification} --pos {input.pos} --out {output} --log {log}"
