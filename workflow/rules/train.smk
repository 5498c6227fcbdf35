# One rule per training stage: the workflow writes the resolved run config, `bcm train` trains (resuming from
# the run directory's checkpoints when rerun). Only network-final.pt is an output: Snakemake deletes the
# outputs of a failed job, and must never take the checkpoints with them.
#
# config.json holds the identity keys and the length (total_steps): a change reruns the stage (new identity keys start
# over, more steps continue). The runtime keys (bcmcore/train/identity.py: batch_gpu, loader workers,
# cadences, device options, ...) go to runtime.json when a training job starts: changing them reruns
# nothing, and the next job that runs uses them.
#
# Benchmarks (results/<ds>/benchmarks/train-<exp>.tsv): Snakemake writes one when a job succeeds and keeps
# no incomplete marker for it, so a killed or failed training leaves none behind and resumes as before. On
# this machine it measures the training processes (children of `bcm launch`); with a cluster site it
# measures `bcm launch` waiting for the job: the wall time only.


rule run_config:
    output:
        "results/{ds}/runs/{exp}/config.json",
    log:
        "results/{ds}/logs/config-{exp}.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        # the identity keys and the length (printed into config.json): a change rewrites the file, which reruns training
        text=get_identity_json,
    shell:
        "printf '%s\\n' {params.text} > {output} 2> {log}"


rule train:
    input:
        config="results/{ds}/runs/{exp}/config.json",
        shards="results/{ds}/shards/manifest.json",
        init=get_init_network,
        teacher=get_teacher_network,
        staged=get_loss_files,
    output:
        "results/{ds}/runs/{exp}/network-final.pt",
    log:
        "results/{ds}/logs/train-{exp}.log",
    benchmark:
        "results/{ds}/benchmarks/train-{exp}.tsv"
    wildcard_constraints:
        exp=trained_regex(),  # imported experiments: rule import_network below
    localrule: True
    conda:
        "../../environment.yml"
    threads: get_threads("train")
    resources:
        **get_launch_resources("train"),
        runtime_keys=get_runtime_json,
    shell:
        "printf '%s\\n' {resources.runtime_keys} > results/{wildcards.ds}/runs/{wildcards.exp}/runtime.json"
        " && {resources.launch} train --run-dir results/{wildcards.ds}/runs/{wildcards.exp} 2>&1 | tee {log}"


# An imported experiment's network: the authors' checkpoint through `bcm import` (no training).
rule import_network:
    input:
        checkpoint=lookup(dpath="datasets/{ds}/experiments/{exp}/import/path", within=config),
    output:
        "results/{ds}/runs/{exp}/network-final.pt",
    log:
        "results/{ds}/logs/import-{exp}.log",
    benchmark:
        "results/{ds}/benchmarks/import-{exp}.tsv"
    wildcard_constraints:
        exp=imported_regex(),
    localrule: True
    conda:
        "../../environment.yml"
    params:
        # format and flags are the command line (the checkpoint is the input): a change reimports
        flags=get_import_flags,
    shell:
        "bcm import{params.flags} {input.checkpoint:q} --out {output} 2>&1 | tee {log}"
