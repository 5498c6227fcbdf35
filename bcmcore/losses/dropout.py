"""Synchronised dropout: the online pass and its stop-grad target pass draw the same masks (iCT;
ECT for iGCT; docs/methods.md §4), for every loss."""

import contextlib

import torch


def draw_seed():
    """A dropout seed from the global RNG (which the loop reseeds per step and rank)."""
    return int(torch.randint(0, 2**62, ()))


@contextlib.contextmanager
def same_dropout(seed, device, enabled=True):
    """Run a forward pass with the RNG of `device` (and the CPU) seeded by `seed`; restore the
    streams after.

    Every pass run under the same seed draws identical dropout masks (iCT's synchronised dropout),
    and the global noise stream is left exactly as it was, whatever the network draws inside.
    """
    if not enabled:
        yield
        return
    device = torch.device(device)
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    mod = torch.get_device_module(device.type)
    index = device.index if device.index is not None else mod.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.random.default_generator.manual_seed(seed)
        with mod.device(index):
            mod.manual_seed(seed)
        yield


def shared_dropout(fn_online, fn_target, device, seed=None, enabled=True):
    """Online pass fn_online() with grad and target pass fn_target() without, under one dropout
    seed (drawn from the global RNG when None) -> (online, target detached). fn_target None: no
    target pass (the RNG streams are the same as with one)."""
    seed = draw_seed() if seed is None else seed
    with same_dropout(seed, device, enabled):
        online = fn_online()
    if fn_target is None:
        return online, None
    with same_dropout(seed, device, enabled), torch.no_grad():
        target = fn_target()
    return online, target.detach()
