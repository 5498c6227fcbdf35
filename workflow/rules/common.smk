"""Helpers only: the config's datasets and experiments, their paths and resolved settings, and the rules'
input and params functions (named functions of the wildcards, as in the snakemake-workflows examples).
Start-up checks: checks.smk; job sizes: launch.smk; imported weights: imports.smk.

Paths: results/<ds>/shards (data), results/<ds>/runs/<exp> (training), results/<ds>/eval/<exp> (sweeps),
results/<ds>/grids/<exp> (PNG grids), results/<ds>/*_table.csv + plots/ (the dataset's tables),
results/<ds>/logs/ and results/<ds>/benchmarks/ (one log and one benchmark table per job).
"""

import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from bcmcore.presets import merged  # the deep merge of the one run-config resolution

STAGES = ("prep", "train", "sample", "eval")
REPO = Path(workflow.basedir).parent  # the Snakefile lives in workflow/
PRESETS = Path(workflow.basedir) / "config"  # config.yaml (the demo) + one preset per dataset


def stop(message):
    """Stop before any job runs, with one readable message."""
    raise WorkflowError(f"bcm workflow: {message}")


def checked_yaml(path):
    """A YAML file read by the project's one loader (duplicate keys stop the workflow, naming file and line)."""
    from bcmcore.config import UserError, load_yaml

    try:
        return load_yaml(path)
    except UserError as e:
        stop(str(e))


# ---------------------------------------------------------------------------------------------- the config


def dataset_config(ds):
    """datasets.<ds> of the config (the presets' known datasets merged in: add_known_datasets)."""
    return config["datasets"][ds]


def experiment_config(ds, exp):
    """datasets.<ds>.experiments.<exp> as written, before the run-config resolution (run_config)."""
    return config["datasets"][ds]["experiments"][exp]


def enabled_datasets():
    return [ds for ds, d in config["datasets"].items() if d.get("enabled", True)]


def add_known_datasets():
    """Every dataset a preset (workflow/config/<preset>.yaml) enables becomes known, disabled for `all`:
    `snakemake results/<ds>/...` builds it with the preset's settings. The config in use (the demo, or the
    --configfile / --config the user gave) is merged over them, so `--configfile <preset>` enables its own.
    """
    known, source = {}, {}
    for path in sorted(PRESETS.glob("*.yaml")):
        if path.name == "config.yaml" or path.stem.startswith("demo_"):
            continue  # the demo and its overlays (demo_long.yaml: `make demo-long`) are no presets
        for ds, d in ((checked_yaml(path) or {}).get("datasets") or {}).items():
            if not isinstance(d, dict) or not d.get("enabled", True):
                continue
            if ds in known:
                stop(f"dataset '{ds}' is defined by two presets: {source[ds]} and {path}")
            known[ds], source[ds] = merged(d, {"enabled": False}), path
    config["datasets"] = merged(known, config.get("datasets") or {})


def command_targets():
    """The targets of this command line. Snakemake reads the Snakefile before it hands the workflow its
    targets, so they are read here as its own CLI reads them; [] outside the CLI (API use)."""
    import contextlib
    import io
    import sys

    from snakemake.cli import parse_args

    if Path(sys.argv[0]).name not in ("snakemake", "__main__.py"):
        return []
    try:
        quiet = io.StringIO()  # it would announce the profiles a second time
        with contextlib.redirect_stderr(quiet):
            return list(parse_args(sys.argv[1:])[1].targets or [])
    except (Exception, SystemExit):
        return []


def datasets_in_use():
    """The datasets this command builds: those its targets name (results/<ds>/...; an unknown name stops the
    workflow), plus the enabled ones unless every target is such a file."""
    targets = command_targets()
    out, other = [], not targets  # no target: the default one, `all`
    for target in targets:
        path = Path(target)
        if path.is_absolute():
            try:
                path = path.relative_to(Path.cwd())
            except ValueError:
                other = True
                continue
        parts = path.parts
        if len(parts) < 2 or parts[0] != "results":
            other = True
            continue
        if parts[1] not in config["datasets"]:
            stop(
                f"unknown dataset '{parts[1]}' in target {target} (known: "
                f"{', '.join(sorted(config['datasets']))}; a new one goes in workflow/config/<name>.yaml)"
            )
        if parts[1] not in out:
            out.append(parts[1])
    return out + [ds for ds in enabled_datasets() if other and ds not in out]


def experiments(ds):
    return [
        e
        for e, d in dataset_config(ds)["experiments"].items()
        if d.get("enabled", True) and staged(ds, e)  # imported: only once staged (imports.smk)
    ]


# ---------------------------------------------------------------------------------------------- staged files
# Files the user stages (the workflow never builds them) are written once in the config, where they are
# used; `raw` says where to get them (a preset writes each path once, as a YAML anchor in `raw` that its
# users alias). Each is an input of the rule that reads it, so Snakemake reruns that job when the file
# changes. Imported checkpoints (import.path): imports.smk.

FEATURE_FILES = (
    "inception_path",
    "vgg16_path",
    "lpips_path",
)  # eval.features (bcmcore/metrics/spec.py)


def prep_files(ds):
    """prep.args.src: what the converter reads (formats without --src read nothing staged)."""
    src = (dataset_config(ds)["prep"].get("args") or {}).get("src")
    return [src] if src else []


def feature_files(ds):
    """The feature networks an evaluation sweep loads (Inception, VGG16, LPIPS)."""
    features = dataset_config(ds).get("eval", {}).get("features", {})
    return [features[key] for key in FEATURE_FILES if features.get(key)]


def loss_files(ds, exp):
    """The LPIPS network a distillation loss loads (loss.lpips_path: CM's CD-LPIPS)."""
    path = experiment_config(ds, exp).get("loss", {}).get("lpips_path")
    return [path] if path else []


def staged_files(ds):
    """{path: the config key that uses it}: every staged file of the dataset's enabled experiments."""
    used = {path: f"datasets.{ds}.prep.args.src" for path in prep_files(ds)}
    used.update({path: f"datasets.{ds}.eval.features" for path in feature_files(ds)})
    for exp in experiments(ds):
        used.update({p: f"datasets.{ds}.experiments.{exp}.loss" for p in loss_files(ds, exp)})
    return used


# ---------------------------------------------------------------------------------------------- run configs


def run_dir(ds, exp):
    return f"results/{ds}/runs/{exp}"


def network(ds, exp):
    return f"{run_dir(ds, exp)}/network-final.pt"


def shards(ds):
    return f"results/{ds}/shards"


def run_config(ds, exp):
    """The resolved run config {model, loss, data, train} of one experiment (docs/interfaces.md):
    bcmcore.presets.resolve, the one resolution (bcm bench and the tests read presets through it).
    """
    from bcmcore.presets import resolve

    return resolve(ds, dataset_config(ds), exp)


def identity_config(ds, exp):
    """The run config without its runtime keys: config.json, and the training stage's rerun trigger."""
    from bcmcore.train.identity import identity_part

    return identity_part(run_config(ds, exp))


def runtime_keys(ds, exp):
    """The runtime keys of the run config (batch_gpu, workers, cadences, ...): runtime.json."""
    from bcmcore.train.identity import runtime_part

    return runtime_part(run_config(ds, exp))


# ---------------------------------------------------------------------------------------------- evaluation


def eval_spec(ds, exp):
    """The `bcm eval` spec of one experiment: the dataset's sweep settings + this model's samplers / inversions
    / guidance (bcmcore/metrics/spec.py)."""
    d = dataset_config(ds)
    e = d["experiments"][exp]
    model = {"name": exp, "network": network(ds, exp), "kind": model_kind(ds, exp)}
    return merged(
        d.get("eval", {}), {"dataset": shards(ds), "models": [merged(model, e.get("eval", {}))]}
    )


def evaluated(ds):
    """Experiments with an evaluation sweep."""
    return [exp for exp in experiments(ds) if experiment_config(ds, exp).get("eval")]


def dataset_outputs(ds):
    """What `all` asks for: tables and plots, one sample grid per model, the application grids, the
    training curves of every trained (not imported) model."""
    outs = [f"results/{ds}/{t}_table.csv" for t in ("fid", "mse", "guidance")] + [
        f"results/{ds}/plots"
    ]
    for exp in experiments(ds):
        e = experiment_config(ds, exp)
        outs.append(f"results/{ds}/grids/{exp}/samples.png")
        outs += [f"results/{ds}/grids/{exp}/edit-{task}.png" for task in e.get("apps", {})]
        if not e.get("import"):
            outs.append(f"results/{ds}/curves/{exp}.png")
    return outs


def json_text(obj, indent=2):
    """A config as shell-quoted, readable JSON (rules write it with printf: no Python process per file)."""
    return shlex.quote(json.dumps(obj, indent=indent, sort_keys=True))


# ---------------------------------------------------------------------------------------------- rule inputs
# Named functions of a job's wildcards (Snakemake calls them with the job's): each rule says in one word
# what it reads.
# Params that are rendered command-line text are the rules' rerun triggers too (Snakemake records params and
# reruns a job whose params changed): the command line is what the output depends on.


def get_prep_input(wildcards):
    return prep_files(wildcards.ds)


def get_prep_flags(wildcards):
    """The converter's flags, prep.args (--src included: the same path as the rule's input)."""
    return flags(dataset_config(wildcards.ds)["prep"].get("args"))


def get_identity_json(wildcards):
    """config.json: the identity keys and the length, exactly what the trained network depends on."""
    return json_text(identity_config(wildcards.ds, wildcards.exp))


def get_runtime_json(wildcards):
    """runtime.json: the runtime keys (a resource, never a trigger: they do not change the network)."""
    return json_text(runtime_keys(wildcards.ds, wildcards.exp), indent=None)


def get_init_network(wildcards):
    """The network a fine-tuning run starts from (an input, so it is trained first)."""
    src = experiment_config(wildcards.ds, wildcards.exp).get("init_from")
    return [network(wildcards.ds, src)] if src else []


def get_teacher_network(wildcards):
    """The EDM a distillation run learns from (an input, so it is trained or imported first)."""
    src = experiment_config(wildcards.ds, wildcards.exp).get("teacher_from")
    return [network(wildcards.ds, src)] if src else []


def get_loss_files(wildcards):
    return loss_files(wildcards.ds, wildcards.exp)


def get_eval_spec_json(wildcards):
    """spec.json: the dataset's sweep settings and this model's samplers / inversions / guidance."""
    return json_text(eval_spec(wildcards.ds, wildcards.exp))


def get_feature_files(wildcards):
    return feature_files(wildcards.ds)


def get_grid_flags(wildcards):
    """`bcm sample` flags of the model's sample grid (experiments.<exp>.grid)."""
    return flags(experiment_config(wildcards.ds, wildcards.exp).get("grid"))


def get_app_flags(wildcards):
    """`bcm edit <task>` flags of one application grid (experiments.<exp>.apps.<task>)."""
    return flags(experiment_config(wildcards.ds, wildcards.exp)["apps"][wildcards.task])


def get_sweep_tables(wildcards):
    """{fid, mse, guidance}: every evaluated model's sweep table of each kind (rule tables; unpack)."""
    return {
        table: expand(
            f"results/{{ds}}/eval/{{exp}}/{table}_table.csv",
            ds=wildcards.ds,
            exp=evaluated(wildcards.ds),
        )
        for table in ("fid", "mse", "guidance")
    }


def get_all_outputs(wildcards):
    return [out for ds in enabled_datasets() for out in dataset_outputs(ds)]
