# Segmentation runs as N independent jobs (segment_part) and a gather (segment).
# N is 1 here; `--set-scatter segment=N` (on the command line or in a profile)
# spreads the work over N jobs, e.g. on a cluster. The outputs do not depend on
# N (src/elmo_pipeline/segment/parts.py), but changing N reruns segmentation.


scattergather:
    segment=1,


SEGMENT_JOBS = len(scatter.segment("{scatteritem}"))
SEGMENT_SETTINGS = as_json({"corpus": config["corpus"], "segment": config["segment"]})


rule segment_part:
    """Normalise, split into sentences and tokenise every N-th chunk of the corpus."""
    input:
        corpus=corpus_files(),
        user_dict=lambda wc: config["segment"]["user_dict"] or [],
        code=sources("segment"),
    output:
        text=temp("results/corpus/parts/{scatteritem}.txt"),
        meta=temp("results/corpus/parts/{scatteritem}.json"),
    params:
        settings=SEGMENT_SETTINGS,
        stem=lambda wc, output: output.meta.removesuffix(".json"),
    threads: max(1, (workflow.cores or 1) // SEGMENT_JOBS)
    log:
        "logs/segment/part-{scatteritem}.log",
    benchmark:
        "results/benchmarks/segment/part-{scatteritem}.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.segment --settings {params.settings:q} "
        "--part {wildcards.scatteritem} --part-out {params.stem} --threads {threads} --log {log}"


rule segment:
    """Gather the parts into shuffled train shards, heldout.txt and stats.json."""
    input:
        parts=gather.segment("results/corpus/parts/{scatteritem}.json"),
        texts=gather.segment("results/corpus/parts/{scatteritem}.txt"),
        code=sources("segment"),
    output:
        shards=SHARDS,
        heldout="results/corpus/heldout.txt",
        stats="results/corpus/stats.json",
    params:
        settings=SEGMENT_SETTINGS,
        stems=lambda wc, input: [p.removesuffix(".json") for p in input.parts],
        out_dir=lambda wc, output: os.path.dirname(output.stats),
    log:
        "logs/segment/segment.log",
    benchmark:
        "results/benchmarks/segment/segment.tsv"
    conda:
        ENV
    shell:
        "python -m elmo_pipeline.segment --settings {params.settings:q} "
        "--gather {params.stems} --out-dir {params.out_dir} --log {log}"
