"""One trained experiment's curves, results/<ds>/curves/<exp>.png, from the stats.jsonl of its run
directory: loss terms and, when train.snapshot_fid is set, the snapshot FID, against the step."""

import contextlib

from bcmcore.metrics import report
from bcmcore.train.monitor import read_stats


def main(sm):
    rows = read_stats(sm.params.stats)
    report.plot_training(sm.output[0], rows, f"{sm.wildcards.ds} {sm.wildcards.exp}")
    fids = sum("snapshot_fid" in r for r in rows)
    print(f"{sm.output[0]}: {len(rows) - fids} status rows, {fids} snapshot FIDs")


with open(snakemake.log[0], "w") as log, contextlib.redirect_stdout(log):  # noqa: F821 (set by Snakemake)
    main(snakemake)  # noqa: F821
