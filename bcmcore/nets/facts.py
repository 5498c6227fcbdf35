"""What a built model is, asked in one place: its kind, its number of classes, one sample's shape.

Samplers, editing, the CLI, the eval sweep and the losses read these instead of each poking at
`model.cfg`; the kind check is the one error a routine raises before its first network call when it
is handed the wrong family.
"""

from bcmcore.config import UserError
from bcmcore.nets.igct import check_labels

# why a kind cannot do what was asked, added to the error
_WHY = {
    "cm": " (an iCT/CM model maps only to sigma_min and has no noiser: inversion and "
    "u > sigma_min need a BCM, class editing iGCT or EDM)",
    "bcm": " (it has no noiser; class editing needs iGCT or EDM)",
}


def check_kind(model, kinds, routine):
    """Raise UserError unless model.kind is one of `kinds`."""
    kind = getattr(model, "kind", None)
    if kind not in kinds:
        raise UserError(
            f"{routine}: needs a model of kind {' or '.join(kinds)}, got kind {kind!r}"
            + _WHY.get(kind, "")
        )


def num_classes(model):
    """Number of classes of a class-conditional model; 0 for an unconditional one (a model may
    state it as `model.num_classes`, else its net config does)."""
    num = getattr(model, "num_classes", None)
    if num is None:
        num = getattr(getattr(getattr(model, "cfg", None), "net", None), "num_classes", 0)
    return int(num or 0)


def is_vector(model):
    """Toy models (the MLP) work on [B, d] vectors, all others on [B, C, H, W] images."""
    return model.cfg.net.arch == "mlp"


def data_shape(model):
    """One sample's shape from the model config: (d,) for the toy MLP, else (C, H, W)."""
    net = model.cfg.net
    if is_vector(model):
        return (net.data_channels,)
    return (net.data_channels, net.resolution, net.resolution)


def class_labels(model, y, n, device, what="class label"):
    """[n] labels checked against a class-conditional model (a scalar is broadcast)."""
    num = num_classes(model)
    if num < 1:
        raise UserError(
            "class-conditional generation/editing needs a model trained with classes "
            "(this one has model.net.num_classes = 0)"
        )
    y = check_labels(y, num, what).to(device)
    return y.expand(n) if y.ndim == 0 else y
