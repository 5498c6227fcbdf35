"""`bcm launch [options] -- <bcm command> [args]`: run any bcm command as one (multi-task,
multi-node) job through submitit, and wait for it (bcmcore.launch)."""

from bcmcore.cli._args import parser, positive_float


def launch(argv):
    """Run any bcm command as one (multi-node) job through submitit, and wait for it."""
    from bcmcore import cli
    from bcmcore import launch as lib

    argv = list(argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = parser(
        "bcm launch",
        "Run a bcm command as one job through submitit (slurm / local / debug executor).",
        usage="bcm launch [options] -- <bcm command> [args]",
    )
    ap.add_argument(
        "--launcher", help="launcher YAML (executor, nodes, gpus_per_node, partition, ...)"
    )
    ap.add_argument(
        "--job-dir", help="submitit logs (default: RUN_DIR/submitit when the command has --run-dir)"
    )
    ap.add_argument(
        "--deadline-min",
        type=positive_float,
        help="cancel the job and exit 124 after this many minutes",
    )
    ap.add_argument(
        "--name",
        help="job name, what squeue shows (default: <dataset>-<experiment>-<command> for "
        "--run-dir results/<dataset>/runs/<experiment>, else bcm-<command>)",
    )
    for key, tp in lib.LAUNCH_KEYS.items():
        ap.add_argument(
            f"--{key.replace('_', '-')}", type=tp, help=f"override the launcher file's {key}"
        )
    args = ap.parse_args(own)
    return lib.run(
        command,
        cli.main,
        args.launcher,
        args.job_dir,
        args.deadline_min,
        args.name,
        **{key: getattr(args, key) for key in lib.LAUNCH_KEYS},
    )


COMMANDS = {"launch": launch}
