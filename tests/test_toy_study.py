"""The plateau study's pieces (bcmcore/bench/toy_study.py): CD's teacher point is one exact-score
Euler step, the sliced Wasserstein distance, and one tiny run end to end."""

import numpy as np
import pytest
import torch

from bcmcore.bench import toy_study
from bcmcore.nets import ModelConfig, NetConfig
from bcmcore.toy import DEMO_GMM


class Recorder(torch.nn.Module):
    kind, sigma_min, sigma_max = "cm", 0.002, 80.0

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x, t, u=None, y=None):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.w * x


def test_cd_teacher_point_is_the_exact_score_euler_step():
    mc = ModelConfig(kind="cm", net=NetConfig(arch="mlp", data_channels=2), sigma_data=1.0)
    loss = toy_study.CDLoss({"curriculum": {"kind": "ict", "s0": 10, "s1": 10}}, mc)
    model = Recorder()
    torch.manual_seed(0)
    x = torch.as_tensor(DEMO_GMM.sample(64, np.random.default_rng(0))[0], dtype=torch.float32)
    out = loss(model, {"x": x}, 0, 10)
    (x1, t1), (x0, t0) = model.calls
    assert bool((t0 < t1).all())
    d = torch.as_tensor(DEMO_GMM.denoise(x1.double().numpy(), t1.double().numpy()))
    euler = x1.double() + ((t0 - t1) / t1).double()[:, None] * (x1.double() - d)
    torch.testing.assert_close(x0.double(), euler, rtol=0, atol=1e-5)
    out["loss"].backward()  # the student pass carries the gradient, the teacher pass none
    assert model.w.grad is not None


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
