"""Linear observation operators A for zero-shot editing (CM paper Alg. 4): what is kept of the
input, and the orthogonal projection onto it.

CM Alg. 4 takes an invertible orthogonal transform A and a mask Omega of the coordinates to
regenerate: the observed part of an image x is (A x) (1 - Omega), and the replacement step
x <- A^-1[(A y)(1 - Omega) + (A x) Omega] equals x - P x + P y, with P the orthogonal projection
onto the kept coordinates' span. Each operator here gives that P in closed form (no QR at run time),
and `observe`, the degraded measurement itself:

  super-resolution  observe = p x p average pooling; the kept direction in each patch is the
                    uniform one, so P x = nearest-upsampled patch means (A's first basis vector
                    per patch is uniform, 1/p each; the rest any orthonormal completion)
  colorization      observe = luminance Y = 0.2989 R + 0.5870 G + 0.1140 B per pixel (the CM code's
                    weights); P x = w (w . x) / |w|^2 per pixel, w the weights

Since A is orthogonal, A(x - P x + P y) = A(y) on the kept coordinates exactly: observe(output) =
observe(input) for every image the replacement step returns.
"""

import torch
import torch.nn.functional as F

from bcmcore.config import UserError

LUMA = (0.2989, 0.5870, 0.1140)  # ITU-R 601 luma, the CM code's colorization weights


class SuperResolution:
    """A = p x p average pooling (the low-resolution image); P = nearest upsampling of it."""

    name = "super-resolution"

    def __init__(self, factor):
        if int(factor) < 2:
            raise UserError(f"super-resolution: --factor must be an integer >= 2, got {factor}")
        self.p = int(factor)

    def check(self, x):
        if x.ndim != 4 or x.shape[-1] % self.p or x.shape[-2] % self.p:
            raise UserError(
                f"super-resolution: images of shape {tuple(x.shape[1:])} do not split into "
                f"{self.p}x{self.p} patches (--factor must divide the image side)"
            )

    def observe(self, x):
        return F.avg_pool2d(x, self.p)

    def project(self, x):
        return F.interpolate(self.observe(x), scale_factor=self.p, mode="nearest")

    def shown(self, x):
        """What the user sees as the input: the low-resolution image, blown up."""
        return self.project(x)


class Colorization:
    """A = per-pixel luminance (colour images only); P = w (w . x) / |w|^2."""

    name = "colorization"

    def check(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise UserError(
                f"colorization: needs 3-channel colour images, got {x.shape[1]}-channel data "
                "(grayscale data has no colour to restore)"
            )

    def _w(self, x):
        return torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

    def observe(self, x):
        return (self._w(x) * x).sum(1, keepdim=True)

    def project(self, x):
        w = self._w(x)
        return w * self.observe(x) / (w * w).sum()

    def shown(self, x):
        """The grayscale input: its luminance in all three channels."""
        return self.observe(x).expand_as(x)


def make_operator(task, factor=4):
    if task == "super-resolution":
        return SuperResolution(factor)
    if task == "colorize":
        return Colorization()
    raise UserError(f"unknown linear editing task {task!r} (super-resolution, colorize)")
