# Raw dataset -> WebDataset shards + manifest (data_prep through `bcm prep`), as one job.


rule prep:
    output:
        "results/{ds}/shards/manifest.json",
    params:
        prep=lambda w: config["datasets"][w.ds]["prep"],  # rerun trigger: the converter and its flags
        args=lambda w: flags(config["datasets"][w.ds]["prep"].get("args")),
    resources:
        launches=1,
        launch=lambda w: launch(w.ds, "prep", f"results/{w.ds}/jobs/prep"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        "results/{ds}/logs/prep.log",
    shell:
        "{resources.launch} prep {params.prep[format]} --out results/{wildcards.ds}/shards{params.args}"
        " 2>&1 | tee {log}"
