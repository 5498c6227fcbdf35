"""Helpers only: config validation at start-up, run-config resolution (job sizes: launch.smk; imported
weights: imports.smk).

Paths: results/<ds>/shards (data), results/<ds>/runs/<exp> (training), results/<ds>/eval/<exp> (sweeps),
results/<ds>/grids/<exp> (PNG grids), results/<ds>/*_table.csv + plots/ (the dataset's tables).
"""

import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

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


def check_config():
    """Schema (unknown keys stop the workflow), then the site's launcher, then each enabled dataset."""
    # Snakemake's own reader keeps a duplicate key's last value: our loader refuses it first
    for path in dict.fromkeys(workflow.configfiles):
        checked_yaml(path)
    try:
        validate(config, str(Path(workflow.basedir) / "schemas/config.schema.yaml"))
    except WorkflowError as e:
        # the jsonschema ValidationError: its path and message are what users need
        cause = e.__context__
        if cause is None or not hasattr(cause, "absolute_path"):
            raise
        where = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
        stop(f"config error at '{where}': {cause.message}")
    if "site" not in config:
        stop(
            "no launcher site set: run with --profile cluster/local (this machine) or --profile cluster/slurm "
            "(a Slurm login node), or pass --config site=DIR (a directory with launcher.yaml)"
        )
    in_use = datasets_in_use()
    if not in_use:
        stop("no dataset is enabled under 'datasets' (set datasets.<name>.enabled: true)")
    for ds in in_use:
        check_raw_files(ds)
        check_prep(ds)
        for stage in STAGES:
            launcher_settings(ds, stage)
        unstaged_notice(ds)
        for exp, e in config["datasets"][ds]["experiments"].items():
            if e.get("import") and e.get("enabled", True):  # staged or not: its flags now
                check_import(ds, exp)
        for exp in experiments(ds):
            if not import_spec(ds, exp):
                check_run_config(ds, exp)
            check_eval_spec(ds, exp)
            check_flags(ds, exp)  # before check_recipes, which parses the grid's flags
            check_recipes(ds, exp)


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
        for e, d in config["datasets"][ds]["experiments"].items()
        if d.get("enabled", True) and staged(ds, e)  # imported: only once staged (below)
    ]


def check_raw_files(ds):
    missing = [r for r in config["datasets"][ds].get("raw", []) if not Path(r["path"]).exists()]
    if missing:
        lines = "\n".join(f"  {r['path']}  <- {r['how']}" for r in missing)
        stop(f"dataset '{ds}': raw files missing (nothing was run). Put them here:\n{lines}")


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

    return resolve(ds, config["datasets"][ds], exp)


def recipe(ds, exp):
    """The run config without its runtime keys: config.json, and the training stage's rerun trigger."""
    from bcmcore.train.recipe import recipe_part

    return recipe_part(run_config(ds, exp))


def runtime_keys(ds, exp):
    """The runtime keys of the run config (batch_gpu, workers, cadences, ...): runtime.json."""
    from bcmcore.train.recipe import runtime_part

    return runtime_part(run_config(ds, exp))


def check_run_config(ds, exp):
    """Unknown or ill-typed keys in model / loss / data / train stop the workflow, with bcmcore's message."""
    from bcmcore.config import UserError
    from bcmcore.losses import build_loss
    from bcmcore.train.config import parse_run_config

    e = config["datasets"][ds]["experiments"][exp]
    if e.get("init_from") and e["init_from"] not in experiments(ds):
        stop(
            f"datasets.{ds}.experiments.{exp}.init_from: '{e['init_from']}' is not an enabled experiment "
            f"(enabled: {', '.join(experiments(ds))})"
        )
    if e.get("teacher_from") and e["teacher_from"] not in experiments(ds):
        stop(
            f"datasets.{ds}.experiments.{exp}.teacher_from: '{e['teacher_from']}' is not an enabled "
            f"experiment (enabled: {', '.join(experiments(ds))})"
        )
    where = f"datasets.{ds}.experiments.{exp}"
    try:
        cfg = parse_run_config(run_config(ds, exp), where=where)
        build_loss(cfg.loss, cfg.model)
    except UserError as e:
        stop(f"{where}: {e}")


def init_network(wildcards):
    """The network a fine-tuning run starts from (an input, so it is trained first)."""
    src = config["datasets"][wildcards.ds]["experiments"][wildcards.exp].get("init_from")
    return [network(wildcards.ds, src)] if src else []


def teacher_network(wildcards):
    """The EDM a distillation run learns from (an input, so it is trained or imported first)."""
    src = config["datasets"][wildcards.ds]["experiments"][wildcards.exp].get("teacher_from")
    return [network(wildcards.ds, src)] if src else []


# ---------------------------------------------------------------------------------------------- evaluation


def eval_spec(ds, exp):
    """The `bcm eval` spec of one experiment: the dataset's sweep settings + this model's samplers / inversions
    / guidance (bcmcore/metrics/spec.py)."""
    d = config["datasets"][ds]
    e = d["experiments"][exp]
    model = {"name": exp, "network": network(ds, exp), "kind": model_kind(ds, exp)}
    return merged(
        d.get("eval", {}), {"dataset": shards(ds), "models": [merged(model, e.get("eval", {}))]}
    )


def check_eval_spec(ds, exp):
    import tempfile

    from bcmcore.config import UserError
    from bcmcore.metrics.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(eval_spec(ds, exp)))
        try:
            load_spec(path)
        except UserError as e:
            stop(
                f"datasets.{ds} eval / experiments.{exp}.eval: {str(e).replace(str(path) + ': ', '')}"
            )


def check_recipes(ds, exp):
    """The sample grid's recipe is built as `bcm sample` builds it (recipes.build: a named recipe, or
    sampler + steps on this model kind) and the application grids' schedules exist (bcm sample /
    edit would fail later)."""
    import shlex

    from bcmcore.config import UserError
    from bcmcore.cli.flags import parser, render
    from bcmcore.cli.sample import sample_recipe
    from bcmcore.recipes import get_schedule

    e = config["datasets"][ds]["experiments"][exp]
    where = f"datasets.{ds}.experiments.{exp}"
    try:
        argv = ["--network", "-", "--out", "-"] + shlex.split(render(e.get("grid", {})))
        sample_recipe(parser("sample").parse_args(argv), model_kind(ds, exp))
    except UserError as err:
        stop(f"{where}.grid: {err}")
    for task, options in e.get("apps", {}).items():
        if options.get("recipe"):
            try:
                get_schedule(options["recipe"])
            except UserError as err:
                stop(f"{where}.apps.{task}: {err}")


def check_prep(ds):
    """prep.format is a data_prep converter and prep.args are its flags (from its own parser)."""
    from bcmcore.config import UserError
    from bcmcore.cli.flags import check, parser

    prep, where = config["datasets"][ds]["prep"], f"datasets.{ds}.prep"
    try:
        converter = parser("prep", prep["format"])
    except UserError as e:
        stop(f"{where}.format: {e}")
    try:
        check(converter, prep.get("args"), f"{where}.args", reserved=("out",))
    except UserError as e:
        stop(str(e))


def check_flags(ds, exp):
    """grid and apps.<task> are flags of `bcm sample` / `bcm edit` (from their own parsers)."""
    from bcmcore.config import UserError
    from bcmcore.cli.flags import EDIT_TASKS, check, parser

    e, where = config["datasets"][ds]["experiments"][exp], f"datasets.{ds}.experiments.{exp}"
    fixed = ("out", "network", "data")  # set by the rules themselves
    try:
        check(parser("sample"), e.get("grid"), f"{where}.grid", reserved=fixed)
        for task, options in e.get("apps", {}).items():
            if task not in EDIT_TASKS:
                stop(
                    f"{where}.apps.{task}: unknown edit task (expected one of {', '.join(EDIT_TASKS)})"
                )
            check(parser("edit"), options, f"{where}.apps.{task}", reserved=fixed)
    except UserError as err:
        stop(str(err))


def evaluated(ds):
    """Experiments with an evaluation sweep."""
    return [
        exp for exp in experiments(ds) if config["datasets"][ds]["experiments"][exp].get("eval")
    ]


def dataset_outputs(ds):
    """What `all` asks for: tables and plots, one sample grid per model, the application grids, the
    training curves of every trained (not imported) model."""
    outs = [f"results/{ds}/{t}_table.csv" for t in ("fid", "mse", "guidance")] + [
        f"results/{ds}/plots"
    ]
    for exp in experiments(ds):
        e = config["datasets"][ds]["experiments"][exp]
        outs.append(f"results/{ds}/grids/{exp}/samples.png")
        outs += [f"results/{ds}/grids/{exp}/edit-{task}.png" for task in e.get("apps", {})]
        if not e.get("import"):
            outs.append(f"results/{ds}/curves/{exp}.png")
    return outs


def all_outputs(wildcards):
    return [out for ds in enabled_datasets() for out in dataset_outputs(ds)]


def json_text(obj, indent=2):
    """A config as shell-quoted, readable JSON (rules write it with printf: no Python process per file)."""
    return shlex.quote(json.dumps(obj, indent=indent, sort_keys=True))
