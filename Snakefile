# bcm-pipeline: shards -> iCT -> BCM fine-tuning; BCM from scratch; iGCT; EDM + CFG -> evaluation -> tables.
#
#   make demo                                               # = snakemake --profile cluster/local all
#   snakemake --profile cluster/slurm all                   # on a Slurm login node
#   snakemake --profile cluster/slurm --configfile workflow/config/cifar10.yaml all
#
# Every heavy rule runs `bcm launch` (one job per stage); science settings live in workflow/config/, site
# settings (executor, partition, job sizes) in cluster/<site>/. Outputs: results/<dataset>/ (see README.md).
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/workflow/config/config.yaml"


report: f"{workflow.basedir}/workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Once, in the process the user started (not again in every job Snakemake spawns or submits).
if workflow.is_main_process:
    check_config()


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


wildcard_constraints:
    ds="[a-z][a-z0-9_]*",
    exp="[a-z][a-z0-9_]*",


rule all:
    default_target: True
    input:
        all_outputs,
