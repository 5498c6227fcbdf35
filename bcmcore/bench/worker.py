"""One side of `bcm bench train --vs` (bcmcore/bench/vs.py): a persistent process that builds the
training step with the bcmcore on its PYTHONPATH (this tree's, or --baseline-tree's) and times
optimizer steps each time the parent asks.

The parent runs this file by path with `python -P` (no script directory on sys.path), so the bcmcore
imported is the tree's that PYTHONPATH names, and of it only bcmcore.bench.step.build_step and
time_steps are used. The parent runs each tree's own worker (bench/vs.py:worker_of); this one also
serves checkouts older than any worker (bcmcore.bench._setup, the name before the package).
Protocol, one JSON object a line: the parent writes {"setup": {...}} once, then {"steps": n} per
round, then closes stdin; each line is answered with one line on the worker's stdout ({"error":
traceback} on failure, then exit 1). Anything else printed goes to stderr, so it never mixes into
the answers.
"""

import json
import os
import sys
import traceback


def main():
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints, also from C code, go to stderr
    sys.stdout = sys.stderr

    def answer(obj):
        answers.write(json.dumps(obj) + "\n")

    try:
        setup = json.loads(sys.stdin.readline())["setup"]
        import torch

        if setup["threads"]:
            torch.set_num_threads(setup["threads"])
        import bcmcore

        try:
            from bcmcore.bench.step import build_step, time_steps
        except ImportError:  # a checkout from before bcmcore/bench/ and before bench_worker.py
            from bcmcore.bench import _setup as build_step
            from bcmcore.bench import time_steps

        device = torch.device(setup["device"])
        stepper, batches = build_step(
            setup["config"], setup["batch"], device, **setup["train_keys"]
        )
        if setup["warmup"]:
            time_steps(stepper, batches, setup["warmup"], 0, device)
        answer(
            {
                "code": os.path.dirname(os.path.abspath(bcmcore.__file__)),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "pid": os.getpid(),
            }
        )
        for line in sys.stdin:  # each step timed alone (synchronised on CUDA): mean and fastest
            times = [
                time_steps(stepper, batches, 1, 0, device) for _ in range(json.loads(line)["steps"])
            ]
            answer({"sec_per_step": sum(times) / len(times), "min_sec_per_step": min(times)})
    except Exception:
        answer({"error": traceback.format_exc(limit=-4)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
