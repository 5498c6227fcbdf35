# Raw dataset -> WebDataset shards + manifest (data_prep through `bcm prep`), as one job.


rule prep:
    output:
        "results/{ds}/shards/manifest.json",
    log:
        "results/{ds}/logs/prep.log",
    localrule: True
    conda:
        "../../environment.yml"
    threads: lambda w: stage_threads(w.ds, "prep")
    resources:
        launches=lambda w: launch_slots(w.ds, "prep"),
        launch=lambda w: launch(w.ds, "prep", f"results/{w.ds}/jobs/prep"),
    params:
        prep=lambda w: config["datasets"][w.ds]["prep"],  # rerun trigger: the converter and its flags
        format=lambda w: shlex.quote(config["datasets"][w.ds]["prep"]["format"]),
        args=lambda w: flags(config["datasets"][w.ds]["prep"].get("args")),
    shell:
        "{resources.launch} prep {params.format} --out results/{wildcards.ds}/shards{params.args}"
        " 2>&1 | tee {log}"
