"""bcmcore.dist owns every collective, and every collective runs on the backend's device.

NCCL accepts CUDA tensors only, so a collective called elsewhere, on a tensor that happens to be on
the CPU, crashes every multi-GPU run at step 0 while the gloo tests pass. On CPU, a guard wrapped
around torch.distributed in 2 gloo ranks catches both mistakes: a call made from outside
bcmcore/dist.py, and a tensor not on the communication device (the rank's GPU under nccl, the CPU
under gloo). A static test reads the package for any torch.distributed use outside dist.py; a `gpu`
test runs the helpers on a real nccl group.
"""

import ast
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import DIST_FILE, install_guard, make_run

import bcmcore
from bcmcore.dist import free_port, local_env

PACKAGE = Path(bcmcore.__file__).resolve().parent


def _guarded_rank(rank, world, port, run_dir, out_dir):
    """One gloo rank: the training loop (broadcast, gradient and loss all-reduces, barriers), then
    the eval sweep's gathers (item_sweep: gather_rows + the NFE agreement), all under the guard."""
    os.environ.update(local_env(rank, world, port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    record = install_guard()
    from bcmcore import dist
    from bcmcore.metrics import sweep
    from bcmcore.train import training_loop

    try:
        training_loop(run_dir, device="cpu")
        # the eval sweep's per-item path: 7 items over 2 ranks (4 + 3 rows), value = 10 * item index
        ev = SimpleNamespace(
            rank=rank,
            world=world,
            device=torch.device("cpu"),
            vector=True,
            progress=False,
            spec=SimpleNamespace(batch_size=2, seed=0),
        )
        x_all = torch.stack([10.0 * torch.arange(7), torch.zeros(7)], 1)
        y_all = torch.zeros(7, dtype=torch.long)
        nfe = 3 if rank == 0 else 5  # ranks disagree: the sweep reports the largest

        def per_item(x, y, rng):
            return x[:, 0].numpy(), 1, nfe

        mean, n_inv, n = sweep.item_sweep(ev, object(), x_all, y_all, per_item, "guarded")
        record["sweep"] = [mean, n_inv, n]
    finally:
        dist.shutdown()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.timeout(300)
def test_collectives_only_through_dist_and_on_its_device(tmp_path, shards):  # noqa: F811
    """Fails on 90e8a54: step.py, loop.py and metrics/sweep.py called torch.distributed directly."""
    import torch.multiprocessing as mp

    run = make_run(tmp_path / "run", shards, total_steps=2, checkpoint_every=2)
    mp.start_processes(
        _guarded_rank,
        args=(2, free_port(), str(run), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    for rank in range(2):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["violations"] == [], "\n".join(sorted(set(record["violations"])))
        # not vacuous: the step, the broadcast and the sweep's gather all went through the guard
        assert {"all_reduce", "broadcast", "all_gather", "barrier"} <= set(record["calls"]), record
        assert record["sweep"] == [pytest.approx(30.0), 1, 5]  # mean of 0, 10, ..., 60; max NFE
    assert (run / "network-final.pt").is_file()


def _distributed_uses(path):
    """(line, what) where a module touches torch.distributed (imports, attribute chains)."""
    tree = ast.parse(path.read_text(), str(path))
    aliases, hits = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("torch.distributed"):
                    hits.append((node.lineno, f"import {a.name}"))
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names]
            if node.module.startswith("torch.distributed") or (
                node.module == "torch" and "distributed" in names
            ):
                hits.append((node.lineno, f"from {node.module} import {', '.join(names)}"))
                aliases.update(a.asname or a.name for a in node.names if a.name == "distributed")
        elif isinstance(node, ast.Attribute) and node.attr == "distributed":
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                hits.append((node.lineno, "torch.distributed"))
    for node in ast.walk(tree):  # uses of an alias (import torch.distributed as td; td.all_reduce)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in aliases and node.value.id != "torch":
                hits.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return hits


def test_no_module_but_dist_uses_torch_distributed():
    """Static: nothing in the package outside bcmcore/dist.py imports or calls torch.distributed."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == DIST_FILE:
            continue
        found += [
            f"{path.relative_to(PACKAGE.parent)}:{n}: {what}" for n, what in _distributed_uses(path)
        ]
    assert found == [], "torch.distributed outside bcmcore/dist.py:\n" + "\n".join(found)
    assert _distributed_uses(DIST_FILE)  # not vacuous: the checker does see dist.py's own uses


def test_gather_rows_single_process_and_bad_shapes():
    from bcmcore import dist

    got = dist.gather_rows(np.array([[1.0, 2.0], [3.0, 4.0]]), [1, 0], 2)
    assert got.tolist() == [[3.0, 4.0], [1.0, 2.0]]
    assert dist.comm_device() == torch.device("cpu")
    t = torch.ones(3)
    dist.all_reduce_mean_([t])  # no group: untouched
    assert t.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.gpu
def test_helpers_on_a_real_nccl_group(tmp_path):
    """A 1-rank nccl group: NCCL rejects CPU tensors even alone, so every helper is exercised."""
    import torch.distributed as td

    from bcmcore import dist
    from bcmcore.metrics import sweep
    from bcmcore.train.step import reduce_terms, sync_grads

    torch.cuda.set_device(0)
    store = td.FileStore(str(tmp_path / "store"), 1)
    td.init_process_group(
        "nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0)
    )
    try:
        assert dist.comm_device() == torch.device("cuda", 0)
        net = torch.nn.Linear(3, 2).cuda()
        net(torch.ones(4, 3, device="cuda")).sum().backward()
        before = net.weight.grad.clone()
        sync_grads(list(net.parameters()))  # world 1: returns early; the helpers below do not
        dist.all_reduce_mean_([p.grad for p in net.parameters()])
        assert torch.equal(net.weight.grad, before)
        terms = reduce_terms({"a": torch.tensor(2.0, device="cuda"), "b": torch.tensor(3.0)})
        assert terms == {"a": 2.0, "b": 3.0}
        cpu_vals = torch.tensor([1.0, 7.0])  # a CPU tensor goes to the GPU and back
        dist.all_reduce_max_([cpu_vals])
        assert cpu_vals.tolist() == [1.0, 7.0] and cpu_vals.device.type == "cpu"
        dist.broadcast_state_(net)
        rows = sweep.gather_rows(np.arange(6.0).reshape(3, 2), [2, 0, 1], 3)
        assert rows.tolist() == [[2.0, 3.0], [4.0, 5.0], [0.0, 1.0]]
        assert dist.max_int(4) == 4
        dist.barrier()
        torch.cuda.synchronize()
    finally:
        td.destroy_process_group()
