# One rule per training stage: the workflow writes the resolved run config, `bcm train` trains (resuming from
# the run directory's checkpoints when rerun). Only network-final.pt is an output: Snakemake deletes the
# outputs of a failed job, and must never take the checkpoints with them.


rule run_config:
    output:
        "results/{ds}/runs/{exp}/config.json",
    log:
        "results/{ds}/logs/config-{exp}.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        run=lambda w: run_config(w.ds, w.exp),  # rerun trigger: exactly the settings this stage depends on
        text=lambda w: json_text(run_config(w.ds, w.exp)),
    shell:
        "printf '%s\\n' {params.text} > {output} 2> {log}"


rule train:
    input:
        config="results/{ds}/runs/{exp}/config.json",
        shards="results/{ds}/shards/manifest.json",
        init=init_network,
    output:
        "results/{ds}/runs/{exp}/network-final.pt",
    log:
        "results/{ds}/logs/train-{exp}.log",
    localrule: True
    conda:
        "../../environment.yml"
    resources:
        launches=launch_slots(),
        launch=lambda w: launch(w.ds, "train", f"results/{w.ds}/runs/{w.exp}/jobs"),
    shell:
        "{resources.launch} train --run-dir results/{wildcards.ds}/runs/{wildcards.exp} 2>&1 | tee {log}"
