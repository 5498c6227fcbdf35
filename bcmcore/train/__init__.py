"""The training loop, its config, EMA and checkpoint I/O (docs/interfaces.md, train)."""

from bcmcore.train.config import RunConfig, TrainConfig, parse_run_config  # noqa: F401
from bcmcore.train.identity import load_run_config  # noqa: F401
from bcmcore.train.loop import NonFiniteLoss, training_loop  # noqa: F401
