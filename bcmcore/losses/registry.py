"""The loss registry: `loss.kind` -> class. Each loss module registers its class here; the package
(bcmcore.losses) builds them from the config."""

LOSSES = {}  # kind -> loss class


def register(kind):
    """Class decorator: `@register("ict")` makes the class buildable as `loss.kind: ict`."""

    def deco(cls):
        if kind in LOSSES and LOSSES[kind] is not cls:
            raise ValueError(
                f"loss kind '{kind}' registered twice ({LOSSES[kind].__name__}, {cls.__name__})"
            )
        LOSSES[kind] = cls
        cls.kind = kind
        return cls

    return deco
