# Evaluation of every trained model, each as one job: the `bcm eval` sweep (FID / precision / recall against
# NFE, inversion MSE, guidance sweeps), the model's sample grid (`bcm sample`) and its application grids
# (`bcm edit`: interpolation, inpainting, JPEG restoration, class editing).


rule eval_spec:
    output:
        "results/{ds}/eval/{exp}/spec.json",
    params:
        spec=lambda w: eval_spec(w.ds, w.exp),  # rerun trigger: this model's sweep settings
        text=lambda w: json_text(eval_spec(w.ds, w.exp)),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        "results/{ds}/logs/spec-{exp}.log",
    shell:
        "printf '%s\\n' {params.text} > {output} 2> {log}"


rule evaluate:
    input:
        spec="results/{ds}/eval/{exp}/spec.json",
        network="results/{ds}/runs/{exp}/network-final.pt",
        shards="results/{ds}/shards/manifest.json",
    output:
        **{t: f"results/{{ds}}/eval/{{exp}}/{t}_table.csv" for t in ("fid", "mse", "guidance")},
    resources:
        launches=1,
        launch=lambda w: launch(w.ds, "eval", f"results/{w.ds}/eval/{w.exp}/jobs"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        "results/{ds}/logs/eval-{exp}.log",
    shell:
        "{resources.launch} eval --spec {input.spec} --out results/{wildcards.ds}/eval/{wildcards.exp}"
        " 2>&1 | tee {log}"


rule sample_grid:
    input:
        network="results/{ds}/runs/{exp}/network-final.pt",
    output:
        report(
            "results/{ds}/grids/{exp}/samples.png",
            caption="../report/samples.rst",
            category="Sample grids",
            labels={"dataset": "{ds}", "model": "{exp}"},
        ),
    params:
        options=lambda w: config["datasets"][w.ds]["experiments"][w.exp].get("grid", {}),
        flags=lambda w: flags(config["datasets"][w.ds]["experiments"][w.exp].get("grid")),
    resources:
        launches=1,
        launch=lambda w: launch(w.ds, "sample", f"results/{w.ds}/grids/{w.exp}/jobs"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        "results/{ds}/logs/grid-{exp}.log",
    shell:
        "{resources.launch} sample --network {input.network} --out results/{wildcards.ds}/grids/{wildcards.exp}"
        "{params.flags} 2>&1 | tee {log}"


rule app_grid:
    input:
        network="results/{ds}/runs/{exp}/network-final.pt",
        shards="results/{ds}/shards/manifest.json",
    output:
        report(
            "results/{ds}/grids/{exp}/edit-{task}.png",
            caption="../report/apps.rst",
            category="Applications",
            labels={"dataset": "{ds}", "model": "{exp}", "task": "{task}"},
        ),
    params:
        options=lambda w: config["datasets"][w.ds]["experiments"][w.exp]["apps"][w.task],
        flags=lambda w: flags(config["datasets"][w.ds]["experiments"][w.exp]["apps"][w.task]),
    wildcard_constraints:
        task="interpolate|inpaint|inpaint-refine|cm-inpaint|jpeg|class",
    resources:
        launches=1,
        launch=lambda w: launch(w.ds, "sample", f"results/{w.ds}/grids/{w.exp}/jobs"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        "results/{ds}/logs/edit-{exp}-{task}.log",
    shell:
        "{resources.launch} edit {wildcards.task} --network {input.network} --data results/{wildcards.ds}/shards"
        " --out results/{wildcards.ds}/grids/{wildcards.exp}{params.flags} 2>&1 | tee {log}"
