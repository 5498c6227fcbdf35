"""Start-up checks: the config against its schema, then each dataset in use (staged files, converter, launcher,
run configs, sweep specs, flags and recipes), so that a mistake stops the workflow before any job runs, with
one message naming the key. Included after common.smk, launch.smk and imports.smk."""

from snakemake.utils import validate


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
        check_staged_files(ds)
        check_prep(ds)
        for stage in STAGES:
            launcher_settings(ds, stage)
        unstaged_notice(ds)
        for exp, e in dataset_config(ds)["experiments"].items():
            if e.get("import") and e.get("enabled", True):  # staged or not: its flags now
                check_import(ds, exp)
        for exp in experiments(ds):
            if not import_spec(ds, exp):
                check_run_config(ds, exp)
            check_eval_spec(ds, exp)
            check_flags(ds, exp)  # before check_recipes, which parses the grid's flags
            check_recipes(ds, exp)


def check_staged_files(ds):
    """Every file the dataset's jobs read from outside results/ exists: those listed under `raw` and those the
    config uses (staged_files: prep's source, the feature networks, the LPIPS network). Each missing one is
    named with where to get it (its `raw` entry), else with the key that uses it."""
    how = {r["path"]: r["how"] for r in dataset_config(ds).get("raw", [])}
    for path, key in staged_files(ds).items():
        how.setdefault(path, f"not listed under datasets.{ds}.raw; used by {key}")
    missing = [path for path in how if not Path(path).exists()]
    if missing:
        lines = "\n".join(f"  {path}  <- {how[path]}" for path in missing)
        stop(f"dataset '{ds}': raw files missing (nothing was run). Put them here:\n{lines}")


def check_run_config(ds, exp):
    """Unknown or ill-typed keys in model / loss / data / train stop the workflow, with bcmcore's message."""
    from bcmcore.config import UserError
    from bcmcore.losses import build_loss
    from bcmcore.train.config import parse_run_config

    e = experiment_config(ds, exp)
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

    e = experiment_config(ds, exp)
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

    prep, where = dataset_config(ds)["prep"], f"datasets.{ds}.prep"
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

    e, where = experiment_config(ds, exp), f"datasets.{ds}.experiments.{exp}"
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
