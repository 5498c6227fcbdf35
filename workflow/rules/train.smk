# One rule per training stage: the workflow writes the resolved run config, `bcm train` trains (resuming from
# the run directory's checkpoints when rerun). Only network-final.pt is an output: Snakemake deletes the
# outputs of a failed job, and must never take the checkpoints with them.
#
# config.json holds the recipe and the length (total_steps): a change reruns the stage (a new recipe starts
# over, more steps continue). The runtime keys (bcmcore/train/recipe.py: batch_gpu, loader workers,
# cadences, device options, ...) go to runtime.json when a training job starts: changing them reruns
# nothing, and the next job that runs uses them.


rule run_config:
    output:
        "results/{ds}/runs/{exp}/config.json",
    log:
        "results/{ds}/logs/config-{exp}.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        run=lambda w: recipe(w.ds, w.exp),  # rerun trigger: exactly what the trained network depends on
        text=lambda w: json_text(recipe(w.ds, w.exp)),
    shell:
        "printf '%s\\n' {params.text} > {output} 2> {log}"


rule train:
    input:
        config="results/{ds}/runs/{exp}/config.json",
        shards="results/{ds}/shards/manifest.json",
        init=init_network,
        teacher=teacher_network,
    output:
        "results/{ds}/runs/{exp}/network-final.pt",
    log:
        "results/{ds}/logs/train-{exp}.log",
    wildcard_constraints:
        exp=trained_regex(),  # imported experiments: rule import_network below
    localrule: True
    conda:
        "../../environment.yml"
    threads: lambda w: stage_threads(w.ds, "train")
    resources:
        launches=lambda w: launch_slots(w.ds, "train"),
        launch=lambda w: launch(w.ds, "train", f"results/{w.ds}/runs/{w.exp}/jobs", w.exp),
        runtime_keys=lambda w: json_text(runtime_keys(w.ds, w.exp), indent=None),  # never a trigger
    shell:
        "printf '%s\\n' {resources.runtime_keys} > results/{wildcards.ds}/runs/{wildcards.exp}/runtime.json"
        " && {resources.launch} train --run-dir results/{wildcards.ds}/runs/{wildcards.exp} 2>&1 | tee {log}"


# An imported experiment's network: the authors' checkpoint through `bcm import` (no training).
rule import_network:
    input:
        checkpoint=lambda w: import_spec(w.ds, w.exp)["path"],
    output:
        "results/{ds}/runs/{exp}/network-final.pt",
    log:
        "results/{ds}/logs/import-{exp}.log",
    wildcard_constraints:
        exp=imported_regex(),
    localrule: True
    conda:
        "../../environment.yml"
    params:
        spec=lambda w: import_spec(w.ds, w.exp),  # rerun trigger: format, path and flags
        flags=lambda w: import_flags(w.ds, w.exp),
    shell:
        "bcm import{params.flags} {input.checkpoint:q} --out {output} 2>&1 | tee {log}"
