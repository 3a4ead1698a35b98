# Train ELMo contextual word vectors on your own corpus (bilm-tf format).
#
#   snakemake --cores all                      # the bundled demo (config/config.yaml)
#   snakemake --cores all --configfile my.yaml # your corpus
#
# Stages: segment -> vocab -> word2vec -> train_bilm -> dump_weights -> embed,
# then evaluate and the figures of `snakemake --report report.html`; on request
# (not in `all`), export_hub: a TF-Hub-style SavedModel in results/hub.
# Each rule runs one module of src/elmo_pipeline and lists its source files
# among its inputs, so editing a stage's code reruns that stage and what
# depends on it, and nothing upstream.

import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# Fine-tuning (bilm.init_from): the network comes from the starting model's options.json;
# a config value that contradicts it stops here, naming both values.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from elmo_pipeline.bilm.options import resolve_init_from  # no Keras

config["bilm"] = resolve_init_from(config.get("bilm", {}))
validate(config, "config/schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/vocab.smk"
include: "workflow/rules/word2vec.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/dump.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export_hub.smk"


rule all:
    default_target: True
    input:
        final_targets(),
