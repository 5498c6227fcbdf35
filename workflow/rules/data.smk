# Raw dataset -> WebDataset shards + manifest (data_prep through `bcm prep`), as one job.


rule prep:
    input:
        # the staged raw dataset the converter reads (prep.args.src; none for the digits)
        get_prep_input,
    output:
        "results/{ds}/shards/manifest.json",
    log:
        "results/{ds}/logs/prep.log",
    benchmark:
        "results/{ds}/benchmarks/prep.tsv"
    localrule: True
    conda:
        "../../environment.yml"
    threads: get_threads("prep")
    resources:
        **get_launch_resources("prep"),
    params:
        # the converter and its flags are the command line: a change reruns prep (and what uses the shards)
        format=lookup(dpath="datasets/{ds}/prep/format", within=config),
        args=get_prep_flags,
    shell:
        "{resources.launch} prep {params.format:q} --out results/{wildcards.ds}/shards{params.args}"
        " 2>&1 | tee {log}"
