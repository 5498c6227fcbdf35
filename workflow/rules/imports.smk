"""Helpers: experiments that import the authors' released weights instead of training. Included after
common.smk."""

import re

# Experiments that import the authors' released weights instead of training (`import: {format, path}`):
# rule import_network (train.smk) writes their network-final.pt with `bcm import`, and every evaluation,
# grid and application then runs on it. They join the DAG once their file is staged; until then the
# workflow says where to put it and plans everything else.

NOT_FLAGS = ("path", "how")  # of an `import` section: the workflow's own keys; the rest are flags


def import_spec(ds, exp):
    """The experiment's `import` section, or None for a trained experiment."""
    return experiment_config(ds, exp).get("import")


def imported_names():
    """Names of imported experiments in any dataset (they must not also name a trained one)."""
    return sorted(
        {
            exp
            for d in config["datasets"].values()
            for exp, e in d.get("experiments", {}).items()
            if e.get("import")
        }
    )


def imported_regex():
    """Wildcard constraint of {exp} for the import rule; the train rule takes the rest."""
    names = imported_names()
    return f"(?:{'|'.join(map(re.escape, names))})" if names else "(?!x)x"


def trained_regex():
    names = imported_names()
    if not names:
        return "[a-z][a-z0-9_]*"
    # not one of the names (a name ends where the wildcard's characters end, not at the path's end)
    return f"(?!(?:{'|'.join(map(re.escape, names))})(?![a-z0-9_]))[a-z][a-z0-9_]*"


def staged(ds, exp):
    spec = import_spec(ds, exp)
    return spec is None or Path(spec["path"]).exists()


def unstaged_notice(ds):
    """One line per imported experiment whose checkpoint is not staged yet (it is left out of `all`)."""
    lines = []
    for exp, e in dataset_config(ds)["experiments"].items():
        spec = e.get("import")
        if spec and e.get("enabled", True) and not Path(spec["path"]).exists():
            lines.append(f"  {spec['path']}  <- {spec['how']}  (experiment {exp})")
    if lines:
        listing = "\n".join(lines)
        print(
            f"bcm workflow: dataset '{ds}': authors' checkpoints not staged, their experiments are "
            f"skipped. Put them here to evaluate them:\n{listing}",
            file=sys.stderr,
        )


def model_kind(ds, exp):
    """The model kind of an experiment: trained (model.kind) or imported (the import format's)."""
    spec = import_spec(ds, exp)
    if spec is None:
        return run_config(ds, exp)["model"]["kind"]
    return "igct" if spec["format"] == "igct-edm" else spec.get("kind", "bcm")


def check_import(ds, exp):
    where = f"datasets.{ds}.experiments.{exp}"
    e = experiment_config(ds, exp)
    for key in ("model", "loss", "train", "data", "init_from", "teacher_from"):
        if key in e:
            stop(f"{where}.{key}: an imported experiment does not train (remove '{key}')")
    from bcmcore.config import UserError
    from bcmcore.cli.flags import check, parser

    try:  # the flags of `bcm import`, from its own parser
        check(parser("import"), import_options(ds, exp), f"{where}.import", reserved=("out",))
    except UserError as err:
        stop(str(err))
    if e["import"]["format"] == "bcm-ict-torch" and e["import"].get("kind") not in ("cm", "bcm"):
        stop(f"{where}.import.kind: bcm-ict-torch needs kind cm (iCT) or bcm")
    if e["import"]["format"] == "openai-cm" and e["import"].get("kind") not in ("cm", "edm"):
        stop(f"{where}.import.kind: openai-cm needs kind cm (CD / CT) or edm (their EDM teacher)")
    trained = {
        x
        for d in config["datasets"].values()
        for x, v in d.get("experiments", {}).items()
        if not v.get("import")
    }
    if exp in trained:
        stop(f"{where}: the name '{exp}' is also a trained experiment; name imported ones apart")


def import_options(ds, exp):
    """The `import` section's flags of `bcm import` (format first, as the command line had it)."""
    spec = import_spec(ds, exp)
    return {"format": spec["format"], **{k: v for k, v in spec.items() if k not in NOT_FLAGS}}


def get_import_flags(wildcards):
    """`bcm import` flags of an imported experiment (rule import_network)."""
    return flags(import_options(wildcards.ds, wildcards.exp))
