# Evaluation of every trained model, each as one job: the `bcm eval` sweep (FID / precision / recall against
# NFE, inversion MSE, guidance sweeps), the model's sample grid (`bcm sample`) and its application grids
# (`bcm edit`: interpolation, inpainting, JPEG restoration, class editing).
from bcmcore.cli.flags import EDIT_TASKS


rule eval_spec:
    output:
        "results/{ds}/eval/{exp}/spec.json",
    log:
        "results/{ds}/logs/spec-{exp}.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        spec=lambda w: eval_spec(w.ds, w.exp),  # rerun trigger: this model's sweep settings
        text=lambda w: json_text(eval_spec(w.ds, w.exp)),
    shell:
        "printf '%s\\n' {params.text} > {output} 2> {log}"


rule evaluate:
    input:
        spec="results/{ds}/eval/{exp}/spec.json",
        network="results/{ds}/runs/{exp}/network-final.pt",
        shards="results/{ds}/shards/manifest.json",
    output:
        **{t: f"results/{{ds}}/eval/{{exp}}/{t}_table.csv" for t in ("fid", "mse", "guidance")},
    log:
        "results/{ds}/logs/eval-{exp}.log",
    localrule: True
    conda:
        "../../environment.yml"
    threads: lambda w: stage_threads(w.ds, "eval")
    resources:
        launches=lambda w: launch_slots(w.ds, "eval"),
        launch=lambda w: launch(w.ds, "eval", f"results/{w.ds}/eval/{w.exp}/jobs", w.exp),
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
    log:
        "results/{ds}/logs/grid-{exp}.log",
    localrule: True
    conda:
        "../../environment.yml"
    threads: lambda w: stage_threads(w.ds, "sample")
    resources:
        launches=lambda w: launch_slots(w.ds, "sample"),
        launch=lambda w: launch(w.ds, "sample", f"results/{w.ds}/grids/{w.exp}/jobs", w.exp),
    params:
        options=lambda w: config["datasets"][w.ds]["experiments"][w.exp].get("grid", {}),
        flags=lambda w: flags(config["datasets"][w.ds]["experiments"][w.exp].get("grid")),
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
    log:
        "results/{ds}/logs/edit-{exp}-{task}.log",
    wildcard_constraints:
        task="|".join(EDIT_TASKS),
    localrule: True
    conda:
        "../../environment.yml"
    threads: lambda w: stage_threads(w.ds, "sample")
    resources:
        launches=lambda w: launch_slots(w.ds, "sample"),
        launch=lambda w: launch(w.ds, "sample", f"results/{w.ds}/grids/{w.exp}/jobs", w.exp),
    params:
        options=lambda w: config["datasets"][w.ds]["experiments"][w.exp]["apps"][w.task],
        flags=lambda w: flags(config["datasets"][w.ds]["experiments"][w.exp]["apps"][w.task]),
    shell:
        "{resources.launch} edit {wildcards.task} --network {input.network} --data results/{wildcards.ds}/shards"
        " --out results/{wildcards.ds}/grids/{wildcards.exp}{params.flags} 2>&1 | tee {log}"
