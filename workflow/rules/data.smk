# Raw dataset -> WebDataset shards + manifest (data_prep through `bcm prep`), as one job.


def prep_args(wildcards):
    args = config["datasets"][wildcards.ds]["prep"].get("args", {})
    return "".join(f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in args.items())


rule prep:
    output:
        "results/{ds}/shards/manifest.json",
    params:
        prep=lambda w: config["datasets"][w.ds]["prep"],  # rerun trigger: the converter and its flags
        args=prep_args,
    resources:
        launches=1,
        launch=lambda w: launch(w.ds, "prep", f"results/{w.ds}/jobs/prep"),
    localrule: True
    log:
        "results/{ds}/logs/prep.log",
    shell:
        "{resources.launch} prep {params.prep[format]} --out results/{wildcards.ds}/shards{params.args}"
        " 2>&1 | tee {log}"
