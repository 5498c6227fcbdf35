"""Networks and preconditioning: MLP (toy), NCSN++ (CIFAR-10), ADM (ImageNet-64); CM / BCM / EDM
wrappers.

Contracts: docs/interfaces.md, section nets. iGCT's two-net model lives in nets/igct.py.
"""

from bcmcore.nets.build import build_model, build_net
from bcmcore.nets.config import ModelConfig, NetConfig
from bcmcore.nets.finetune import bcm_from_cm
from bcmcore.nets.io import load_network, save_network
from bcmcore.nets.precond import ConsistencyModel, EDMDenoiser

__all__ = [
    "NetConfig",
    "ModelConfig",
    "build_net",
    "build_model",
    "save_network",
    "load_network",
    "bcm_from_cm",
    "ConsistencyModel",
    "EDMDenoiser",
]
