"""docs/colorize_toy.png: zero-shot colorization (CM paper Alg. 4, A = luminance) with the exact
flow map of a mixture of coloured digits, so the grid shows the algorithm, not a trained net.

The data: the 10 sklearn digits 0-9 at 8x8, each tinted its own colour (a Gaussian mixture, one
component per tinted digit, std 0.05). Each row: a sample, its luminance (the input), the
colorization; the colours come back because each tint's luminance differs. Run:
    python docs/colorize_toy.py          (about a minute on one core)
"""

import sys
from pathlib import Path

import numpy as np
import torch

from bcmcore import editing, recipes, sampling
from bcmcore.images import save_grid
from bcmcore.linear_ops import Colorization
from bcmcore.toy import ExactFlowMap, GaussianMixture

TINTS = [(1, 0.2, 0.2), (0.2, 1, 0.2), (0.3, 0.3, 1), (1, 1, 0.2), (0.2, 1, 1), (1, 0.2, 1),
         (1, 0.6, 0.1), (0.6, 0.2, 1), (0.6, 1, 0.4), (1, 1, 1)]  # fmt: skip


def tinted_digits():
    """[10, 3, 8, 8] in [-1, 1]: digit k (the first of its class in sklearn's set) in colour k."""
    from sklearn.datasets import load_digits

    d = load_digits()
    first = [int(np.flatnonzero(d.target == k)[0]) for k in range(10)]
    ink = torch.as_tensor(d.images[first] / 16.0)  # [10, 8, 8] in [0, 1]
    tint = torch.tensor(TINTS, dtype=torch.float64)[:, :, None, None]
    return ink[:, None] * tint * 2 - 1


OUT = Path(__file__).with_name("colorize_toy.png")


def main(out=OUT):
    means = tinted_digits()
    gmm = GaussianMixture(tuple(map(tuple, means.flatten(1).tolist())), (0.05,) * 10, (0.1,) * 10)
    model = ExactFlowMap(gmm)
    x = means + 0.05 * torch.randn(means.shape, generator=torch.Generator().manual_seed(0),
                                   dtype=torch.float64)  # fmt: skip
    op = Colorization()
    times = recipes.get_schedule("cm-edit-40").for_model(model).times  # the CM code's 40 levels
    res, nfe = editing.cm_linear_edit(model, x, op, times, sampling.SeededRNG(range(10)))
    err = (op.observe(res) - op.observe(x)).abs().max().item()
    rows = torch.stack([x, op.shown(x), res], 1).flatten(0, 1).clamp(-1, 1)
    save_grid(out, ((rows + 1) * 127.5).round().to(torch.uint8).numpy(), ncol=3)
    hit = (res[:, None] - means[None]).flatten(2).norm(dim=2).argmin(1).eq(torch.arange(10))
    print(f"wrote {out}: NFE {nfe}, max |Y(out) - Y(in)| {err:.1e}, "
          f"{int(hit.sum())}/10 colorized to their own tint")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
