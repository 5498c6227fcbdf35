"""Ground truth for distillation: CD and bidirectional CD (bcmcore/losses/cd.py) with the toy
mixture's exact denoiser as the teacher, against the exact flow map, at the budget of the plateau
study's CT rows (bcmcore/bench/toy_study.py: width-64 MLP, batch 256, RAdam lr 1e-3, EMA 0.999, 3000
steps, seed 0; docs/distillation.md has the table).

CT at this budget (tests/test_groundtruth.py, docs/sampler_times.md §4; seeds 0/1): iCT 1-step
0.33, BCT 1-step 0.29-0.37, BCT 2-step 0.20-0.23, BCT inversion (t0 = 0.5 -> T) 0.36-0.46. Each
distilled model must beat the best CT value seen at equal steps. Measured (seed 0): CD 1-step
0.233; BCD 1-step 0.187, 2-step 0.113, inversion 0.214.
"""

import pytest

from bcmcore.bench import toy_study

pytestmark = pytest.mark.slow
CT_BEST = {"gen1": 0.29, "gen2": 0.20, "inv": 0.36}  # the lowest CT value at this budget


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):  # conftest.one_thread: tiny tensors run faster on one intra-op thread
    yield


@pytest.fixture(scope="module")
def ref():
    return toy_study.references()


def test_cd_beats_ct_at_one_step(ref):
    avg, _ = toy_study.train("cm", "cd", 3000)  # CM recipe: L2, lambda = 1, N = 18, mu = 0
    r = toy_study.evaluate(avg, ref)
    print("CD", r)
    assert r["gen1"] < CT_BEST["gen1"]


def test_bcd_beats_bct_at_one_and_two_steps_and_inversion(ref):
    avg, _ = toy_study.train("bcm", "bcd", 3000)
    r = toy_study.evaluate(avg, ref)
    print("BCD", r)
    for key, bound in CT_BEST.items():
        assert r[key] < bound, f"{key} {r[key]:.3f} >= CT's best {bound}"
    assert r["inv"] < r["inv_own_euler"] - 0.2  # the inversion comes from u, not the denoiser
