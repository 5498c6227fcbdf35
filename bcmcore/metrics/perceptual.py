"""LPIPS (Zhang et al. 2018, Eq. 1): d(x, x0) = sum_l mean_{h,w} || w_l * (y_l - y0_l) ||^2 over a
network's layers l, with y_l the activations unit-normalised along channels.

* `alex`: the `lpips` package's LPIPS-AlexNet (iGCT's reconstruction and editing metric). Its linear
  heads w_l ship in the lpips wheel; the AlexNet backbone is torchvision's ImageNet file, staged by
  the user (lpips would download it) and loaded into the package's network built with
  `pnet_rand=True`.
* `demo`: Eq. 1 with w_l = 1 on the demo digits classifier's three conv activations, a stand-in for
  sets where no ImageNet network means anything (16x16 grey digits are too small for AlexNet's
  strides). Tables name the network they used, so the two are never mixed up.

Both take images in [-1, 1], [N, C, H, W], and return one distance per pair, [N].
"""

import warnings
from pathlib import Path

import torch

from bcmcore.metrics import staged


class LPIPS:
    def __init__(self, net, key, device, rgb=True):
        self.net, self.key, self.device, self.rgb = net, key, torch.device(device), rgb

    @torch.no_grad()
    def __call__(self, x, y, batch_size=256):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.shape != y.shape or x.ndim != 4:
            raise ValueError(
                f"lpips: pairs [N, C, H, W] of one shape expected: {x.shape}, {y.shape}"
            )
        if self.rgb and x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        out = [
            self.net(a.float().to(self.device), b.float().to(self.device)).reshape(-1).cpu()
            for a, b in zip(x.split(batch_size), y.split(batch_size))
        ]
        return torch.cat(out).double().numpy()


def _lin_heads_file():
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / staged.LPIPS_ALEX_LIN.name


def lpips_alex(backbone_path, device="cpu"):
    """LPIPS-AlexNet v0.1 from the staged torchvision AlexNet file (nothing downloads)."""
    import lpips

    backbone = staged.check(backbone_path, staged.ALEXNET)
    staged.check(_lin_heads_file(), staged.LPIPS_ALEX_LIN)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    # lpips splits torchvision's `features.<i>` into slices: net.slice<k>.<i>.<param>
    mine = {}
    for name in net.net.state_dict():
        i_param = name.split(".", 1)[1]
        mine[name] = state[f"features.{i_param}"]
    net.net.load_state_dict(mine)
    return LPIPS(net.to(device).eval().requires_grad_(False), "lpips-alex", device)


class _FeatureLPIPS(torch.nn.Module):
    """Eq. 1 with w_l = 1 over the outputs of the given layers (lpips' `lpips=False` baseline)."""

    def __init__(self, body, taps):
        super().__init__()
        self.body, self.taps = body, set(taps)

    def _acts(self, x):
        out = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
            if i == max(self.taps):
                return out
        return out

    def forward(self, x, y):
        return sum(((a - b) ** 2).sum(1).mean((1, 2)) for a, b in zip(self._acts(x), self._acts(y)))


def demo_lpips(shard_dir, device="cpu"):
    """The demo stand-in: unit-weight LPIPS on the demo classifier's ReLU activations."""
    from bcmcore.metrics.demo_classifier import load_demo_classifier

    clf = load_demo_classifier(shard_dir, device=device)
    taps = [i for i, m in enumerate(clf.body) if isinstance(m, torch.nn.ReLU)]
    net = _FeatureLPIPS(clf.body, taps).to(device).eval()
    return LPIPS(net, f"lpips-demo-{clf.digest}", device, rgb=False)


def build_lpips(cfg, shard_dir, device="cpu"):
    """From the spec's `features`: LPIPS-AlexNet where `lpips_path` is staged, the demo stand-in on
    the demo set, else None (the tables leave LPIPS empty and say why)."""
    if cfg.lpips_path:
        return lpips_alex(cfg.lpips_path, device)
    if cfg.kind == "demo":
        return demo_lpips(shard_dir, device)
    return None
