"""Merge every model's sweep tables of one dataset into results/<ds>/{fid,mse,guidance}_table.csv +
plots/."""

import contextlib
import json
from pathlib import Path

from bcmcore.metrics import report


def main(sm):
    out = Path(sm.output.fid).parent
    rows = {
        name: [report.typed(r) for path in sm.input[name] for r in report.read_csv(path)]
        for name in report.COLUMNS
    }
    info = {"models": {}}
    for path in sm.input.fid:
        run = Path(path).parent
        if (run / "eval_info.json").is_file():
            info["models"][run.name] = json.loads((run / "eval_info.json").read_text())
    Path(sm.output.plots).mkdir(parents=True, exist_ok=True)
    report.write_all(out, rows, info)
    print(f"{out}: " + ", ".join(f"{len(v)} {k} rows" for k, v in rows.items()))


with open(snakemake.log[0], "w") as log, contextlib.redirect_stdout(log):  # noqa: F821 (set by Snakemake)
    main(snakemake)  # noqa: F821
