# The dataset's tables and plots: every model's sweep rows in one fid / mse / guidance table (light CPU work;
# under cluster/slurm it is the one kind of rule sent to Slurm through the executor plugin).


rule tables:
    input:
        # every evaluated model's sweep table of each kind: {fid, mse, guidance}
        unpack(get_sweep_tables),
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
        stats="results/{ds}/runs/{exp}/stats.jsonl",
    script:
        "../scripts/curves.py"
