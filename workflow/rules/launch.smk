"""Helpers: where and how big each heavy stage's job is (the launcher site, per-stage settings, the `bcm
launch` prefix of heavy rules, how local stages share the machine). Included after common.smk."""

import functools
import shlex


def site_file(name):
    """A file of the launcher site (relative paths: from the working directory, else from the workflow)."""
    site = Path(config["site"])
    if not site.is_absolute() and not site.exists():
        site = REPO / site
    return site / name


def launcher_settings(ds, stage):
    """Per-stage job size: the site's stages.yaml, then datasets.<ds>.launch.<stage> (a copy)."""
    return dict(stage_launcher(ds, stage)[0])


@functools.cache
def stage_launcher(ds, stage):
    """(settings, LauncherConfig) of one stage, resolved and checked once per run: every heavy rule asks
    for its launch prefix, slot and threads. Checked against the launcher file by bcmcore.launch itself
    (unknown executor, bad keys -> stop here, before any job)."""
    from bcmcore.config import UserError, load_yaml
    from bcmcore.launch import LAUNCH_KEYS, load_launcher

    stages = {}
    if site_file("stages.yaml").is_file():
        try:
            stages = load_yaml(site_file("stages.yaml")) or {}
        except UserError as e:
            stop(str(e))
        if not isinstance(stages, dict) or not all(
            isinstance(v, (dict, type(None))) for v in stages.values()
        ):
            stop(f"{site_file('stages.yaml')}: expected a mapping stage -> {{launch key: value}}")
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            stop(
                f"{site_file('stages.yaml')}: unknown stage '{unknown[0]}' (known: {', '.join(STAGES)})"
            )
    settings = merged(stages.get(stage) or {}, dataset_config(ds).get("launch", {}).get(stage, {}))
    unknown = sorted(set(settings) - set(LAUNCH_KEYS))
    if unknown:
        stop(
            f"launcher for stage '{stage}' of dataset '{ds}': unknown key '{unknown[0]}' "
            f"(known: {', '.join(LAUNCH_KEYS)})"
        )
    try:
        return settings, load_launcher(site_file("launcher.yaml"), **settings)
    except UserError as e:
        stop(f"launcher for stage '{stage}' of dataset '{ds}': {e}")


def launch_slots(ds, stage):
    """The `launches` of a heavy stage: 1 where a stage on this machine takes its GPUs (the local profile
    allows one such stage at a time), 0 on CPUs (stages share the cores through `threads`, stage_threads)
    and where stages go to a cluster (as many queued at once as the DAG allows)."""
    cfg = stage_launcher(ds, stage)[1]
    return 1 if cfg.executor in ("local", "debug") and cfg.gpus_per_node > 0 else 0


def stage_threads(ds, stage):
    """Cores a heavy stage takes from Snakemake's `--cores`: on this machine, its tasks x cpus_per_task
    (unset: all of them, one stage at a time), so CPU stages with cpus_per_task 1 run side by side; a
    stage sent to a cluster only waits here (1)."""
    cfg = stage_launcher(ds, stage)[1]
    if cfg.executor not in ("local", "debug"):
        return 1
    return cfg.num_tasks * cfg.cpus_per_task if cfg.cpus_per_task else workflow.cores


def flags(options):
    """{key: value} -> ' --key value ...', every token shell-quoted (checked in check_flags)."""
    from bcmcore.cli.flags import render

    return render(options)


# Where a stage's `bcm launch` keeps its job files (submitit's logs, the Slurm scripts): beside its outputs.
JOB_DIRS = {
    "prep": "results/{ds}/jobs/prep",
    "train": "results/{ds}/runs/{exp}/jobs",
    "eval": "results/{ds}/eval/{exp}/jobs",
    "sample": "results/{ds}/grids/{exp}/jobs",
}


def launch(ds, stage, exp=None):
    """The `bcm launch ... --` prefix running one stage as one job. Rules pass it as a resource: the job's
    size never triggers a rerun (the global batch, and so the result, does not depend on it). The job is
    named <dataset>-<experiment>-<stage> (<dataset>-<stage> for the dataset's own stages): what squeue
    shows."""
    site = shlex.quote(str(site_file("launcher.yaml")))
    name = shlex.quote("-".join(p for p in (ds, exp, stage) if p))
    job_dir = JOB_DIRS[stage].format(ds=ds, exp=exp)
    return (
        f"bcm launch --launcher {site} --job-dir {job_dir} --name {name}"
        f"{flags(launcher_settings(ds, stage))} --"
    )


def get_threads(stage):
    """The `threads` of the stage's rule, as a function of the job's wildcards (stage_threads)."""

    def threads(wildcards):
        return stage_threads(wildcards.ds, stage)

    return threads


def get_launch_resources(stage):
    """The `resources` of the stage's rule, functions of the job's wildcards: `launches` (the local
    slot, launch_slots) and `launch` (the `bcm launch` prefix). Resources, not params: a job's size and site
    never trigger a rerun."""

    def launches(wildcards):
        return launch_slots(wildcards.ds, stage)

    def launch_prefix(wildcards):
        return launch(wildcards.ds, stage, wildcards.get("exp"))

    return {"launches": launches, "launch": launch_prefix}
