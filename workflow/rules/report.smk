# The dataset's tables and plots: every model's sweep rows in one fid / mse / guidance table (light CPU work;
# under cluster/slurm it is the one kind of rule sent to Slurm through the executor plugin).


rule tables:
    input:
        fid=lambda w: expand("results/{ds}/eval/{exp}/fid_table.csv", ds=w.ds, exp=evaluated(w.ds)),
        mse=lambda w: expand("results/{ds}/eval/{exp}/mse_table.csv", ds=w.ds, exp=evaluated(w.ds)),
        guidance=lambda w: expand(
            "results/{ds}/eval/{exp}/guidance_table.csv", ds=w.ds, exp=evaluated(w.ds)
        ),
    output:
        fid=report(
            "results/{ds}/fid_table.csv", caption="../report/fid_table.rst", category="Tables"
        ),
        mse=report(
            "results/{ds}/mse_table.csv", caption="../report/mse_table.rst", category="Tables"
        ),
        guidance=report(
            "results/{ds}/guidance_table.csv",
            caption="../report/guidance_table.rst",
            category="Tables",
        ),
        plots=report(
            directory("results/{ds}/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        "results/{ds}/logs/tables.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/tables.py"


# A trained experiment's loss (and snapshot-FID) curves from its run's stats.jsonl. stats.jsonl is not an
# output of rule train (a failed job's outputs are deleted, and a resumed run needs its rows), so the rule
# depends on network-final.pt, written after the last row, and reads the stats file beside it.
rule training_curves:
    input:
        network="results/{ds}/runs/{exp}/network-final.pt",
    output:
        report(
            "results/{ds}/curves/{exp}.png",
            caption="../report/curves.rst",
            category="Training curves",
            labels={"dataset": "{ds}", "model": "{exp}"},
        ),
    log:
        "results/{ds}/logs/curves-{exp}.log",
    wildcard_constraints:
        exp=trained_regex(),  # imported networks have no training statistics
    localrule: True
    conda:
        "../../environment.yml"
    params:
        stats=lambda w: f"results/{w.ds}/runs/{w.exp}/stats.jsonl",
    script:
        "../scripts/curves.py"
