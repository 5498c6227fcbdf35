"""Every benchmark and acceptance check, one module each; `bcm bench` / `bcm check` (cli/bench.py,
cli/check.py) give each a small handler.

step         the training step: img/s, sec/step, MFU (`bcm bench train`), DDP scaling (`bench ddp`)
vs           `bcm bench train --vs A B [--baseline-tree PATH]`: two sides timed interleaved
worker       one side's process of `vs`, run by path with the bcmcore of its own tree
loader_rate  the shard loader's images/s vs in-memory decoding (`bcm bench data`)
loader_need  img/s one GPU consumes per preset experiment vs its loader's supply (`bench loader`)
gpu_check    the one-shot GPU acceptance check (`bcm check gpu`)
toy_study    the plateau study on the 2-D toy (`python -m bcmcore.bench.toy_study`)

A new benchmark is a module here plus a handler and a subparser in cli/bench.py.
"""
