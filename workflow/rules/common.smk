# Helpers shared by the rules: source files of each stage, the settings a
# stage receives, and cross-key checks the JSON schema cannot express.

import ast
import glob
import json
import os
import shlex
import sys

from snakemake_interface_executor_plugins.settings import DeploymentMethod

sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from elmo_pipeline.bilm.options import projection_problem  # the stages' own check, no Keras

SRC = os.path.join(workflow.basedir, "src")
PKG = os.path.join(SRC, "elmo_pipeline")
ENV = "../../envs/cpu.yaml"
GPU_ENV = "../../envs/gpu.yaml"
# Rules run `python -m elmo_pipeline.<stage>` from this checkout, installed or not.
# Without --sdm conda, `python` is the interpreter running Snakemake (the
# project's virtual environment), even when that environment is not activated.
_PATH = "" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else (
    f"export PATH={os.path.dirname(sys.executable)}:$PATH; "
)
shell.prefix(f"{_PATH}export PYTHONPATH={SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


class ConfigError(ValueError):
    """A configuration value that passed the schema but cannot work."""


def check_config(cfg):
    """Checks across keys, so bad settings fail before any job runs."""
    lstm = cfg["bilm"]["lstm"]
    if problem := projection_problem(lstm, "bilm.lstm"):
        raise ConfigError(problem)
    if cfg["bilm"]["input"] == "char":
        n_filters = sum(n for _, n in cfg["bilm"]["char_cnn"]["filters"])
        if n_filters <= lstm["projection_dim"]:
            raise ConfigError(
                f"bilm.char_cnn.filters add up to {n_filters} filters; they must exceed "
                f"bilm.lstm.projection_dim ({lstm['projection_dim']})"
            )
    start = cfg["bilm"]["init_from"]
    if start is not None and os.path.abspath(start) == os.path.abspath("results/model"):
        raise ConfigError(
            "bilm.init_from is results/model, which this run overwrites: copy the model "
            "first (cp -r results/model models/start) and start from the copy"
        )
    w2v_dim = cfg["word2vec"]["vector_size"]
    if token_init_from_word2vec(cfg) and w2v_dim not in (None, lstm["projection_dim"]):
        raise ConfigError(
            f"word2vec.vector_size ({w2v_dim}) must equal bilm.lstm.projection_dim "
            f"({lstm['projection_dim']}) (or be null) to initialise the token embedding"
        )
    for pattern in cfg["corpus"]["paths"]:
        found = glob.glob(os.path.expanduser(pattern))
        if not found:
            raise ConfigError(f"corpus.paths: {pattern!r} matches no file")
        if not any(os.path.isfile(f) for f in found):
            raise ConfigError(
                f"corpus.paths: {pattern!r} is a directory or matches only directories; "
                "give files, or a glob of the files in it"
            )
    for section in ("classification", "pos"):
        given = cfg["evaluate"][section]["path"]
        if given and not os.path.isfile(os.path.expanduser(given)):
            raise ConfigError(f"evaluate.{section}.path: {given!r} is not a file")
    for pattern in cfg["embed"]["inputs"]:
        if not glob.glob(os.path.expanduser(pattern)):
            raise ConfigError(f"embed.inputs: {pattern!r} matches no file")


def starting_model_files(cfg=config):
    """The files of bilm.init_from's model directory (a changed starting model reruns
    training), or none."""
    model_dir = cfg["bilm"]["init_from"]
    if model_dir is None:
        return []
    names = ("options.json", "weights.hdf5", "lm_weights.hdf5", "vocab.txt", "vocab_embedding.hdf5")
    found = [os.path.join(model_dir, n) for n in names if os.path.isfile(os.path.join(model_dir, n))]
    return found


def token_init_from_word2vec(cfg=config):
    return cfg["bilm"]["input"] == "token" and cfg["bilm"]["token_init"] == "word2vec"


def sources(*modules):
    """Source files the given stage modules really import, as rule inputs.

    A rule lists the code it runs among its inputs, so editing that code reruns
    the rule (and what depends on it) and editing any other file does not. The
    list is each module's closure of `elmo_pipeline` imports (function-level
    imports included), read from the source with `ast`, so it follows the code.
    A package name ("bilm") stands for all of its modules.
    """
    files = set()
    for stage in modules:
        path = os.path.join(PKG, *stage.split("."))
        if os.path.isdir(path):
            names = [
                f"elmo_pipeline.{stage}.{os.path.basename(f)[:-3]}"
                for f in glob.glob(os.path.join(path, "*.py"))
            ]
        elif os.path.isfile(f"{path}.py"):
            names = [f"elmo_pipeline.{stage}"]
        else:
            raise ValueError(f"sources({stage!r}): no module {path}.py and no package {path}")
        for name in names:
            files |= _import_closure(name)
    return sorted(files)


def _module_file(name):
    """The file of module `name` (`elmo_pipeline.x.y`), or None when it is not one."""
    path = os.path.join(SRC, *name.split("."))
    for candidate in (f"{path}.py", os.path.join(path, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _imported_names(path, package):
    """Absolute names of the `elmo_pipeline` modules (or attributes) `path` imports.

    Imports inside a PEP 562 `__getattr__` run only when that attribute is
    used, not when the package is imported, so they are not followed.
    """
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            continue
        nodes.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _import_closure(name):
    """Files of module `name`, its parent packages and everything they import."""
    files, todo = set(), [name]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] != "elmo_pipeline":
            continue
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            dotted = ".".join(parts[:depth])
            path = _module_file(dotted)
            if path is None or path in files:
                continue
            files.add(path)
            is_package = path.endswith("__init__.py")
            package = dotted if is_package else dotted.rpartition(".")[0]
            todo.extend(_imported_names(path, package))
    return files


def as_json(obj):
    """A settings dict as one JSON string, passed to a module with --settings."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def corpus_files():
    files = {f for p in config["corpus"]["paths"] for f in glob.glob(os.path.expanduser(p))}
    return sorted(f for f in files if os.path.isfile(f))


def word2vec_settings():
    settings = dict(config["word2vec"])
    if settings["vector_size"] is None:
        settings["vector_size"] = config["bilm"]["lstm"]["projection_dim"]
    return settings


def embed_input_files():
    """embed.inputs with their globs expanded (Snakemake takes input paths literally), or
    the held-out text; sorted and without repeats, as the embed stage reads them."""
    patterns = config["embed"]["inputs"]
    if not patterns:
        return ["results/corpus/heldout.txt"]
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        files += [f for f in matches if os.path.isfile(f) and f not in files]
    return files


def embed_input_args(wildcards, input):
    """Raw files from embed.inputs are segmented; the held-out text already is."""
    if config["embed"]["inputs"]:
        return "--inputs " + " ".join(shlex.quote(f) for f in input.texts)
    return "--pretokenized " + " ".join(shlex.quote(f) for f in input.texts)


SHARDS = [
    f"results/corpus/train/shard-{i:05d}.txt" for i in range(config["corpus"]["n_shards"])
]


def training_launcher(wildcards, resources):
    """``srun ... -n <tasks>`` before the training command when the profile asks for several
    processes (resources ``mpi`` and ``tasks``, as Snakemake's SLURM plugin documents for MPI
    jobs); nothing otherwise, so a workstation run stays one plain process."""
    launcher = resources.get("mpi")
    if not launcher:
        return ""
    return f"{launcher} -n {resources.get('tasks', 1)} "


def final_targets():
    return [
        "results/model/weights.hdf5",
        "results/model/options.json",
        "results/embeddings",
        *EVALUATION_TARGETS,
    ]


EVALUATION_TARGETS = [
    "results/eval/perplexity.json",
    "results/eval/classification.json",
    "results/eval/pos.json",
    "results/eval/polysemy.json",
    "results/eval/polysemy.png",
    "results/plots/training_curve.png",
    "results/plots/corpus_stats.png",
    "results/plots/evaluation.png",
]


def evaluate_labelled_input(wildcards):
    """The labelled file of evaluate.classification and the gold-tagged file of
    evaluate.pos, those that are configured."""
    paths = {
        "labelled": config["evaluate"]["classification"]["path"],
        "tagged": config["evaluate"]["pos"]["path"],
    }
    return {name: os.path.expanduser(path) for name, path in paths.items() if path}


check_config(config)
