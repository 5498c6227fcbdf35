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
