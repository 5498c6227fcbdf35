"""One optimizer step of the training loop (also timed by `bcm bench train`).

Accumulation rounds of `batch_gpu` samples; before each round the global torch RNG (CPU and CUDA) is
reseeded from (seed, step, chunk = round * world + rank), so a step's noise depends on nothing saved
and a chunk's noise not on how chunks are spread over processes. Gradients are averaged over
processes by hand after backward: the losses call the model several times (BCT: 4 passes, one
through functional_call with detached parameters), which DDP's per-forward hooks do not follow.
"""

import torch

from bcmcore import dist
from bcmcore.train import device as device_keys
from bcmcore.train.config import round_seed
from bcmcore.train.ema import EMA


def sync_grads(params):
    """Average gradients over processes: one flat all-reduce per dtype. A parameter unused on some
    rank (grad None) gets zeros there, so every rank reduces the same list."""
    if dist.world_size() == 1:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce_max_([has])
    grads = []
    for p, h in zip(params, has.tolist()):
        if h and p.grad is None:
            p.grad = torch.zeros_like(p)
        if h:
            grads.append(p.grad)
    dist.all_reduce_mean_(grads)


def grad_norm(params):
    """Global L2 norm of the gradients (the norm clip_grad_norm_ clips), without changing them."""
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    norms = [torch.linalg.vector_norm(g) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def reduce_terms(terms):
    """Mean of every logged scalar over processes (same key order everywhere) -> {name: float}."""
    keys = sorted(terms)
    vals = [torch.as_tensor(terms[k]).detach().float().reshape(()) for k in keys]
    # terms live on the GPU and the CPU (a loss's stage counter): stack them on one device
    dev = next((v.device for v in vals if v.device.type != "cpu"), torch.device("cpu"))
    v = torch.stack([x.to(dev) for x in vals])
    dist.all_reduce_mean_([v])
    return dict(zip(keys, v.tolist()))  # one device-to-host copy for all terms


class Stepper:
    """model + loss + RAdam + evaluation EMA; `backward(batches, step)` then `update()` make one
    step."""

    def __init__(self, model, loss_fn, train_cfg, device, conditional=True, rounds=None):
        """`rounds`: accumulation rounds per step, t.split_batch(world)[1] unless the caller has
        them already (the loop splits the batch before it builds anything)."""
        t = self.t = train_cfg
        self.model, self.loss_fn, self.device, self.conditional = (
            model,
            loss_fn,
            device,
            conditional,
        )
        self.rounds = rounds or t.split_batch(dist.world_size())[1]
        self.lr = None  # the lr of the last `backward` (a function of the step: TrainConfig.lr_at)
        # the one call per process start: before the first CUDA matmul, as cuBLAS reads its
        # workspace setting when it creates its handle (the loop moves weights, nothing more, first)
        device_keys.configure_backends(t, device)
        self.channels_last = device_keys.uses_channels_last(t, model)
        if self.channels_last:
            # weights only: the first convolution turns activations NHWC. The batch stays NCHW, so
            # the loss's noise (randn_like, drawn in memory order) is the same as without the key.
            model.to(memory_format=torch.channels_last)  # before the EMA copy and the optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.RAdam(
            self.params, lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay
        )
        self.ema = EMA(model, t.ema_rate)  # BCM fine-tuning: the EMA starts at the initial weights
        if hasattr(loss_fn, "prepare"):  # a loss with its own state (CD: teacher, target theta-)
            loss_fn.prepare(model)
        if t.compile:
            device_keys.compile_model(model)
        # bf16 autocast covers every pass inside the loss (BCT's functional_call, both iGCT nets);
        # the preconditioning scalings stay fp32 (elementwise ops are not autocast)
        self.autocast = dict(
            device_type=device.type, dtype=torch.bfloat16, enabled=t.bf16 and device.type == "cuda"
        )

    def backward(self, batches, step):
        """Gradients of the global-batch mean loss for `step`; returns the loss terms averaged over
        all rounds and processes. `batches`: an iterator yielding one per-round batch dict per
        call."""
        t, rank, world, rounds = self.t, dist.rank(), dist.world_size(), self.rounds
        self.lr = t.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        terms = {}
        for r in range(rounds):
            batch = {
                k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                for k, v in next(batches).items()
            }
            if not self.conditional:
                # labelled data (gmm2d components, CIFAR classes) for an unconditional model
                batch["y"] = None
            # seeds CPU and every CUDA device
            torch.manual_seed(round_seed(t.seed, step, r * world + rank))
            with torch.autocast(**self.autocast):
                out = self.loss_fn(self.model, batch, step, t.schedule_steps or t.total_steps)
            (out["loss"] / rounds).backward()
            for k, v in out.items():
                terms[k] = terms.get(k, 0.0) + v.detach().float() / rounds
        sync_grads(self.params)
        if t.grad_clip is not None:
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        else:  # watched either way (train/monitor.py); the gradients are not touched
            terms["grad_norm"] = grad_norm(self.params)
        return reduce_terms(terms)

    def update(self):
        self.optimizer.step()
        self.ema.update(self.model)
        if hasattr(self.loss_fn, "after_step"):  # CD's target EMA theta- (CM Alg. 2)
            self.loss_fn.after_step(self.model)
