"""Identity-zero initialisation of a BCM network from a trained CM network (BCM §3.2, C.1;
docs/methods.md §6).

The fine-tune path always uses the `project` two-time embedding (untied u-MLP + bias-free [I | 0]
projection), for every arch. BCM's from-scratch NCSN++ widens the embedding MLP instead (`concat`),
but a widened MLP cannot be initialised to reproduce the CM net exactly, the projection can.
"""

import copy
import dataclasses

import torch

from bcmcore.nets.build import build_model, build_net
from bcmcore.nets.config import NetConfig
from bcmcore.nets.precond import ConsistencyModel


def _init_from(new, net):
    """Load a freshly built `project` two-time net `new` from the single-time net `net`, in
    place."""
    missing, unexpected = new.load_state_dict(net.state_dict(), strict=False)  # every shared weight
    assert not unexpected, unexpected
    assert all(k.startswith(("time_embed.mlp_u.", "time_embed.align.")) for k in missing), missing
    with torch.no_grad():
        te = new.time_embed
        te.mlp_u.load_state_dict(copy.deepcopy(te.mlp_t.state_dict()))  # untied copy of the t-MLP
        te.init_identity_zero()
    return new


def _bcm_cfg(cfg: NetConfig):
    if cfg.two_time:
        raise ValueError(
            "bcm_from_cm expects a single-time (CM) network; this one already embeds u"
        )
    return dataclasses.replace(cfg, two_time=True, two_time_embed="project")


def bcm_from_cm(cm):
    """CM raw net -> BCM raw net, or CM ConsistencyModel -> BCM ConsistencyModel (same
    device/dtype).

    At init the BCM net ignores u: F_bcm(x, c_t, c_u) == F_cm(x, c_t) bitwise for every u.
    """
    if isinstance(cm, ConsistencyModel):
        if cm.kind != "cm":
            raise ValueError(f"bcm_from_cm expects a kind 'cm' model, got {cm.kind!r}")
        model = build_model(dataclasses.replace(cm.cfg, kind="bcm", net=_bcm_cfg(cm.cfg.net)))
        _init_from(model.net, cm.net)
        return _like(model, cm)
    return _like(_init_from(build_net(_bcm_cfg(cm.cfg)), cm), cm)


def _like(new, old):
    p = next(old.parameters())
    return new.to(device=p.device, dtype=p.dtype).train(old.training)
