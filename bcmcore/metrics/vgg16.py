"""VGG16 features for improved precision/recall (Kynkäänniemi et al. 2019), the protocol of iGCT's
P/R.

The network is StyleGAN2-ADA's TorchScript `vgg16.pt` (staged by the user): called on float images
in [0, 255], [N, 3, H, W], with `return_features=True`, it resizes to 224x224 itself and returns the
4096-d fc7 activations. Generated and real images go through the same `FeatureExtractor` as the FID
features.
"""

import torch

from bcmcore.config import UserError
from bcmcore.metrics import staged
from bcmcore.metrics.features import FeatureExtractor

DIM = 4096


def extractor_from_module(net, device="cpu", key="vgg16"):
    """A FeatureExtractor around any module with the TorchScript's interface:
    net(x, return_features=True)."""
    net = net.to(device).eval()
    return FeatureExtractor(lambda x: net(x, return_features=True), key, DIM, device=device)


def vgg16_extractor(path, device="cpu"):
    """The staged StyleGAN2-ADA VGG16, checked to be a TorchScript file giving 4096-d features."""
    file = staged.check(path, staged.VGG16)
    try:
        net = torch.jit.load(str(file), map_location="cpu")
        probe = net(torch.zeros(1, 3, 32, 32), return_features=True)
    except Exception as e:
        raise UserError(
            f"{file}: not StyleGAN2-ADA's VGG16 TorchScript ({type(e).__name__}: {e}); "
            f"download {staged.VGG16.url}"
        ) from None
    if tuple(probe.shape) != (1, DIM):
        raise UserError(f"{file}: features of shape {tuple(probe.shape)[1:]}, expected ({DIM},)")
    return extractor_from_module(net, device)
