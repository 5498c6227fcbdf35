"""Evaluation EMA of the weights (iCT/BCM: 0.99993 CIFAR-10, 0.99997 ImageNet-64).

Used only for evaluation and network files; the consistency teacher is stopgrad(theta), never this
EMA.
"""

import copy

import torch


class EMA:
    """theta_ema <- rate * theta_ema + (1 - rate) * theta after every optimizer step (buffers
    copied)."""

    def __init__(self, model, rate):
        self.rate = float(rate)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        src = dict(model.named_parameters())
        ema, cur = [], []
        for name, p in self.model.named_parameters():
            ema.append(p)
            cur.append(src[name].detach())
        if ema:
            torch._foreach_lerp_(ema, cur, 1.0 - self.rate)
        src_buf = dict(model.named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(src_buf[name])

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)
