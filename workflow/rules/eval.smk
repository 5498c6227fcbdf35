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
        # the spec itself (printed into spec.json): a change rewrites the file, which reruns the sweep
        text=get_eval_spec_json,
    shell:
        "printf '%s\\n' {params.text} > {output} 2> {log}"


rule evaluate:
    input:
        spec="results/{ds}/eval/{exp}/spec.json",
        network="results/{ds}/runs/{exp}/network-final.pt",
        shards="results/{ds}/shards/manifest.json",
        # the staged feature networks the spec names (Inception, VGG16, LPIPS; none for the demo's)
        features=get_feature_files,
    output:
        **{t: f"results/{{ds}}/eval/{{exp}}/{t}_table.csv" for t in ("fid", "mse", "guidance")},
    log:
        "results/{ds}/logs/eval-{exp}.log",
    benchmark:
        "results/{ds}/benchmarks/eval-{exp}.tsv"
    localrule: True
    conda:
        "../../environment.yml"
    threads: get_threads("eval")
    resources:
        **get_launch_resources("eval"),
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
    benchmark:
        "results/{ds}/benchmarks/grid-{exp}.tsv"
    localrule: True
    conda:
        "../../environment.yml"
    threads: get_threads("sample")
    resources:
        **get_launch_resources("sample"),
    params:
        # the grid's flags are the command line: a change redraws the grid
        flags=get_grid_flags,
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
    benchmark:
        "results/{ds}/benchmarks/edit-{exp}-{task}.tsv"
    wildcard_constraints:
        task="|".join(EDIT_TASKS),
    localrule: True
    conda:
        "../../environment.yml"
    threads: get_threads("sample")
    resources:
        **get_launch_resources("sample"),
    params:
        # the application's flags are the command line: a change redraws its grid
        flags=get_app_flags,
    shell:
        "{resources.launch} edit {wildcards.task} --network {input.network} --data results/{wildcards.ds}/shards"
        " --out results/{wildcards.ds}/grids/{wildcards.exp}{params.flags} 2>&1 | tee {log}"
