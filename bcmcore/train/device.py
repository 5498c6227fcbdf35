"""How a training run uses its device: the `train.*` runtime keys tf32, cudnn_benchmark,
deterministic, channels_last and compile. They change speed (and rounding), never what a run
trains (its identity keys).

TF32 and the cuDNN autotuner are on by default, as in both reference repositories. Deterministic
kernels are what bitwise resume needs on a GPU (README, "What is bitwise where"): cuDNN's
deterministic algorithms, no autotuner, and cuBLAS with a fixed workspace. CPU runs need none of
this: their kernels are deterministic already and the TF32/cuDNN flags do not apply.
"""

import os

import torch
from torch import nn


def configure_backends(t, device):
    """Set the process-wide backend flags for TrainConfig `t` on `device` (every flag, every call:
    a second job in the same process does not inherit the first one's)."""
    torch.use_deterministic_algorithms(t.deterministic, warn_only=True)  # warns on ops without one
    if torch.device(device).type != "cuda":
        return
    if t.deterministic:
        # read when cuBLAS creates its handle; training_loop calls this before the first matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    precision = "tf32" if t.tf32 else "ieee"
    # the fp32_precision API only: torch 2.14 raises when the legacy allow_tf32 flags are mixed in
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic
    torch.backends.cudnn.deterministic = t.deterministic


def is_convolutional(model):
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def uses_channels_last(t, model):
    """NHWC is for convolutional nets (tensor-core convolutions want it); MLPs ignore the key.

    Weights only (train/step.py); dropout masks inside the net are then drawn in NHWC order, so a
    run with the key is statistically, not bitwise, the same as one without it."""
    return t.channels_last and is_convolutional(model)


def compile_model(model, **compile_kwargs):
    """torch.compile every backbone of `model` in place (nn.Module.compile keeps the parameter
    names: state dicts, checkpoints and the EMA are unchanged). Called after the EMA copy is made:
    the EMA only evaluates, and stays eager."""
    for child in model.children():
        if any(True for _ in child.parameters()):
            child.compile(**compile_kwargs)
