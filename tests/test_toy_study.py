"""The plateau study's pieces (bcmcore/bench/toy_study.py): distillation runs with the exact
teacher, the sliced Wasserstein distance, and one tiny run end to end."""

import numpy as np
import pytest
import torch

from bcmcore.bench import toy_study
from bcmcore.toy import DEMO_GMM, ExactDenoiser


def test_distillation_runs_use_the_registered_loss_with_the_exact_teacher(capsys):
    """cd / bcd go through bcmcore.losses.cd (one home) with the mixture's exact denoiser."""
    assert toy_study.main(["tiny", "bcm", "bcd", "3", '{"target_ema": 0.5}']) == 0
    row = capsys.readouterr().out
    for key in ("gen1", "gen2", "inv", "target_ema"):
        assert f'"{key}"' in row
    den = ExactDenoiser(DEMO_GMM)
    x = torch.as_tensor(DEMO_GMM.sample(8, np.random.default_rng(0))[0])
    np.testing.assert_allclose(den(x, 0.3).numpy(), DEMO_GMM.denoise(x.numpy(), 0.3))


def test_sliced_wasserstein():
    a = np.random.default_rng(0).standard_normal((500, 2))
    assert toy_study.sliced_wasserstein(a, a) == 0.0
    # a shift (1, 1) moves the projection on angle th by cos th + sin th: RMS over th = 1
    assert toy_study.sliced_wasserstein(a, a + 1.0) == pytest.approx(1.0, rel=0.1)


def test_one_tiny_run_reports_every_column(capsys):
    assert toy_study.main(["tiny", "bcm", "bct", "3", '{"u_T_prob": 0.5}']) == 0
    row = capsys.readouterr().out
    for key in ("gen1", "gen2", "inv", "inv_own_euler", "swd1", "swd2", "online_gen1"):
        assert f'"{key}"' in row
