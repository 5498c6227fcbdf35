"""The presets (workflow/config/*.yaml) against the papers and the authors' code.

Every experiment of every preset (disabled ones included) is built on the meta device and its
parameter count compared with the count the authors' own code gives for that network. Those figures
were obtained by building the authors' modules (commits below) and counting `parameters()`:
  EDM      NVlabs/edm training/networks.py (SongUNet, DhariwalUNet)
  score    yang-song/score_sde_pytorch models/ncsnpp.py with configs/ve/*_ncsnpp*.py; its Gaussian
           Fourier weights (nf = 128 numbers) are a frozen nn.Parameter there and a buffer here, so
           the figure is its trainable count
  BCM-iCT  Mosasaur5526/BCM-iCT-torch 74ad31f iCT/cm/unet.py, BCM/cm/unet_bcf.py with the released
           ImageNet-64 arguments (also in the checkpoint fixture's constructor.json)
  iGCT     swimmincatt35/iGCT 8ead6d1 igct_train.py --arch ncsnpp / adm-small (counts recorded in
           the iGCT checkpoint fixture's constructor.json)
Where no authors' code exists (BCM's CIFAR-10 / FFHQ / LSUN nets: the JAX code is unreleased) the
single-time net is checked against the authors' base network and the two-time extra against the
count BCM App. C.1 implies (features of t and u concatenated, both dense layers and every block's
embedding projection twice as wide). Key schedule values are checked too: stage lengths, lambda_rec
at 190k and 210k, EMA half-life in Mimg.
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from bcmcore import presets
from bcmcore.config import from_dict
from bcmcore.losses import build_loss
from bcmcore.nets import ModelConfig, build_model
from bcmcore.nets.layers import ResBlock
from bcmcore.train.config import parse_run_config

DATA = Path(__file__).parent / "data"

# (preset, experiment) -> authors' parameter count (per net for iGCT: noiser, denoiser), source
AUTHORS = {
    ("cifar10", "ict"): (
        56_395_523,
        "score: CM/iCT NCSN++ (cifar10_ncsnpp_continuous, progressive "
        "none, residual input); EDM SongUNet ncsnpp label_dim 0 gives the same",
    ),
    ("cifar10", "ict_deep"): (
        97_610_499,
        "score: the same with num_res_blocks 8 "
        "(cifar10_ncsnpp_deep_continuous; iGCT's ncsnpp-deep)",
    ),
    ("cifar10", "igct"): (
        (56_398_339, 56_464_131),
        "iGCT --arch ncsnpp, CIFAR-10 (constructor.json)",
    ),
    ("cifar10", "edm"): (56_398_339, "EDM SongUNet ncsnpp, label_dim 10 (= iGCT's noiser)"),
    ("imagenet64", "ict"): (278_023_107, "BCM-iCT iCT/scripts/ict_imagenet64_no32_qkv_4096.sh"),
    ("imagenet64", "bcm_ft"): (279_941_571, "BCM-iCT BCM/scripts/bcf_imagenet64_no32_qkv_4096.sh"),
    ("imagenet64", "ict_deep"): (465_069_891, "BCM-iCT iCT UNetModel, num_res_blocks 6"),
    ("imagenet64", "bcm_ft_deep"): (466_988_355, "BCM-iCT BCM UNetModel, num_res_blocks 6"),
    ("imagenet64", "igct"): (
        (182_306_691, 182_504_067),
        "iGCT --arch adm-small (constructor.json)",
    ),
    ("imagenet64", "edm"): (295_899_267, "EDM DhariwalUNet, ImageNet-64, label_dim 1000"),
    ("cifar10", "cd"): (56_395_523, "CM CD: the iCT score NCSN++ (cifar10_ncsnpp_continuous)"),
    ("imagenet64", "cd"): (
        295_899_267,
        "CM CD: the teacher's ADM as a CM (openai cm_train.py builds the student like the EDM)",
    ),
}
# BCM from scratch (two-time "concat" nets): the single-time base network's authors' count
BASE = {
    ("cifar10", "bcm_scratch"): 56_395_523,  # score (as cifar10/ict)
    ("cifar10", "bcm_scratch_deep"): 97_610_499,  # score (as cifar10/ict_deep)
    ("ffhq64", "bcm_scratch"): 62_758_787,  # score: the CIFAR-10 config, ch_mult (1,2,2,2) at 64x64
    ("lsun256", "bcm_scratch"): 65_574_421,  # score: configs/ve/bedroom_ncsnpp_continuous.py
    ("cifar10", "bcm_ft"): 56_395_523,  # fine-tuned variant (not in the paper for CIFAR-10)
    ("imagenet64", "bcm_scratch"): 278_023_107,  # not in the paper (BCM fine-tunes ImageNet-64)
}
# our counts of the two-time nets (docs/methods.md §12: 61.9 M and 106.3 M on CIFAR-10)
TWO_TIME = {
    ("cifar10", "bcm_scratch"): 61_901_571,
    ("cifar10", "bcm_scratch_deep"): 106_262_275,
    ("ffhq64", "bcm_scratch"): 69_051_267,
    ("lsun256", "bcm_scratch"): 72_325_653,
    ("cifar10", "bcm_ft"): 57_314_051,  # "project": + untied u-MLP + W_align (docs/methods.md §6)
    ("imagenet64", "bcm_scratch"): 294_717_891,
}
# (preset, experiment) -> schedule: iCT / BCT stage lengths [(steps, intervals)], iGCT stage length
# and last stage, lambda_rec at 190k / 210k, EMA half-life in Mimg
SCHEDULE = {
    ("cifar10", "ict"): dict(
        stages=[(50_000, s) for s in (10, 20, 40, 80, 160, 320, 640, 1280)], ema_mimg=10.14
    ),
    ("cifar10", "bcm_scratch"): dict(stages="as ict", ema_mimg=10.14),
    ("cifar10", "igct"): dict(
        stage_steps=40_000, last_stage=8, lambda_rec=(2e-5, 2e-5), ema_mimg=7.10
    ),
    ("cifar10", "edm"): dict(ema_mimg=0.50),
    ("imagenet64", "ict"): dict(
        stages=[(100_000, s) for s in (10, 20, 40, 80, 160, 320, 640, 1280)], ema_mimg=94.64
    ),
    ("imagenet64", "bcm_ft"): dict(
        stages=[(210_000, 320), (16_000, 640), (8_000, 1280)], ema_mimg=94.64
    ),
    ("imagenet64", "bcm_ft_deep"): dict(
        stages=[(360_000, 320), (100_000, 640), (10_000, 1280)], ema_mimg=94.64
    ),
    ("imagenet64", "igct"): dict(
        stage_steps=40_000, last_stage=6, lambda_rec=(4e-5, 6e-5), ema_mimg=7.10
    ),
    ("imagenet64", "edm"): dict(ema_mimg=50.0),
    ("lsun256", "bcm_scratch"): dict(
        stages=[
            (75_000, 10),
            (75_000, 20),
            (60_000, 40),
            (60_000, 80),
            (45_000, 160),
            (45_000, 320),
            (30_000, 640),
            (30_000, 1280),
        ],
        ema_mimg=1.27,
    ),
}


def count(module):
    return sum(p.numel() for p in module.parameters())


def built(preset, exp):
    run = parse_run_config(presets.run_config(preset, exp), where=f"{preset}/{exp}")
    with torch.device("meta"):
        return run, build_model(run.model)


def two_time_extra(single_net):
    """Extra parameters of BCM's concat embedding over the single-time net (BCM App. C.1): input
    features 2F -> Dense(2E) -> Dense(2E), and every block's embedding Dense reads 2E values."""
    mlp = single_net.time_embed.mlp_t
    F, E = mlp[0].in_features, mlp[0].out_features
    blocks = sum(b.emb.out_features for b in single_net.modules() if isinstance(b, ResBlock))
    labels = single_net.cond.num_classes if single_net.cond.label is not None else 0
    extra = (4 * F * E + 2 * E - F * E - E) + (4 * E * E + 2 * E - E * E - E) + E * blocks
    return extra + E * labels  # the class embedding is added in the (now 2E-wide) embedding


def segments(fn, total):
    """Piecewise-constant schedule over steps 0..total-1 -> [(length, value), ...]."""
    out, start, value = [], 0, fn(0)
    for step in range(1, total):
        v = fn(step)
        if v != value:
            out.append((step - start, value))
            start, value = step, v
    return out + [(total - start, value)]


def all_experiments():
    for preset in presets.PRESETS:
        for exp in presets.experiments(preset):
            yield pytest.param(preset, exp, id=f"{preset}/{exp}")


def test_every_preset_experiment_is_counted():
    want = {(p, e) for p in presets.PRESETS for e in presets.experiments(p)}
    assert want == set(AUTHORS) | set(BASE)


@pytest.mark.parametrize("preset, exp", list(all_experiments()))
def test_parameter_count_is_the_authors(preset, exp):
    run, model = built(preset, exp)
    key = (preset, exp)
    if key in AUTHORS:
        want, source = AUTHORS[key]
        got = (
            (count(model.noiser_net), count(model.denoiser_net))
            if run.model.kind == "igct"
            else count(model)
        )
        assert got == want, f"{preset}/{exp}: {got} parameters, authors' code {want} ({source})"
        return
    single_cfg = dataclasses.replace(run.model.net, two_time=False)
    with torch.device("meta"):
        single = build_model(ModelConfig(kind="cm", net=single_cfg))
    assert count(single) == BASE[key], "the single-time base net"
    if run.model.net.two_time_embed == "concat":
        assert count(model) == BASE[key] + two_time_extra(single.net)
    assert count(model) == TWO_TIME[key]


def test_igct_imagenet64_nets_have_the_authors_tensor_shapes():
    """Beyond the count: the multiset of tensor shapes of EDM's DhariwalUNet adm-small with AdaGN
    (iGCT fixture; our label table is stored [classes, 768], theirs as a Linear [768, classes])."""
    ref = json.loads((DATA / "igct_imagenet64_shapes.json").read_text())
    _, model = built("imagenet64", "igct")
    for net, key in ((model.noiser_net, "noiser_enc"), (model.denoiser_net, "denoiser_dec")):
        shapes = {}
        for name, t in net.state_dict().items():
            shape = list(t.shape)[::-1] if name == "cond.label.weight" else list(t.shape)
            k = "x".join(map(str, shape))
            shapes[k] = shapes.get(k, 0) + 1
        assert shapes == ref[key], key


def half_life_mimg(train):
    return math.log(0.5) / math.log(train.ema_rate) * train.batch / 1e6


@pytest.mark.parametrize("key", sorted(SCHEDULE), ids="/".join)
def test_schedules(key):
    preset, exp = key
    want = SCHEDULE[key]
    run = parse_run_config(presets.run_config(preset, exp))
    total = run.train.total_steps
    assert half_life_mimg(run.train) == pytest.approx(want["ema_mimg"], rel=5e-3)
    loss = build_loss(run.loss, run.model)
    if "stages" in want:
        stages = (
            SCHEDULE[(preset, "ict")]["stages"] if want["stages"] == "as ict" else want["stages"]
        )
        got = segments(lambda s: loss.cfg.curriculum.num_points(s, total), total)
        assert got == [(n, s + 1) for n, s in stages]  # s intervals = s + 1 grid points
    if "stage_steps" in want:
        got = segments(lambda s: loss.stage(s, total), total)
        n = want["stage_steps"]
        assert got[:-1] == [(n, i) for i in range(want["last_stage"])]
        assert got[-1][1] == want["last_stage"] and 0 < got[-1][0] <= n
        assert (loss.lambda_rec(190_000), loss.lambda_rec(210_000)) == want["lambda_rec"]
        assert loss.lambda_rec(179_999) == 2e-5  # the authors' first raise is at tick 1800 = 180k


@pytest.mark.parametrize("preset", (*presets.PRESETS, presets.DEMO))
def test_presets_module_resolves_what_the_workflow_writes(tmp_path, preset):
    """bcmcore.presets.run_config is what the workflow resolves: its identity part equals the
    config.json the run_config rule writes, for every experiment (the disabled ones enabled by an
    override file) of every preset and of the demo, so bench and these tests build exactly what
    the workflow trains. Also the schema and start-up checks with everything on."""
    from helpers import snakemake, stage_raw_files, write_yaml

    from bcmcore.train.identity import identity_part

    ds, _ = presets.load(preset)
    exps = presets.experiments(preset)
    stage_raw_files(tmp_path, preset)
    on = write_yaml(
        tmp_path / "all-on.yaml",
        {"datasets": {ds: {"experiments": {e: {"enabled": True} for e in exps}}}},
    )
    res = snakemake(
        tmp_path,
        "--until",
        "run_config",
        "--configfile",
        str(presets.preset_path(preset)),
        on,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    for exp in exps:  # config.json holds the identity keys (runtime keys go to runtime.json)
        written = json.loads((tmp_path / f"results/{ds}/runs/{exp}/config.json").read_text())
        assert written == identity_part(presets.run_config(preset, exp)), f"{preset}/{exp}"
    # and the whole DAG of the dataset's tables, deep experiments included, dry-runs
    res = snakemake(tmp_path, "-n", "all", "--configfile", str(presets.preset_path(preset)), on)
    assert res.returncode == 0, res.stdout[-3000:]
    for exp in exps:
        assert f"results/{ds}/runs/{exp}/network-final.pt" in res.stdout, exp


def test_bench_configs_are_the_presets():
    """`bcm bench train --config adm-64` builds the ImageNet-64 BCM preset net (279.9 M; it was a
    284.1 M variant with 32x32 attention before the configs came from the presets)."""
    from bcmcore.bench.step import bench_config

    for name, (preset, exp) in {
        "adm-64": ("imagenet64", "bcm_ft"),
        "ncsnpp-cifar": ("cifar10", "bcm_scratch"),
        "lsun256/bcm_scratch": ("lsun256", "bcm_scratch"),
    }.items():
        c = bench_config(name)
        assert c["model"] == presets.run_config(preset, exp)["model"]
        with torch.device("meta"):
            m = build_model(from_dict(ModelConfig, c["model"], "model"))
        assert count(m) == count(built(preset, exp)[1])
    assert bench_config("adm-64")["shape"] == (3, 64, 64)
    with torch.device("meta"):
        m = build_model(from_dict(ModelConfig, bench_config("adm-64")["model"], "model"))
    assert count(m) == AUTHORS[("imagenet64", "bcm_ft")][0]


@pytest.mark.parametrize(
    "preset, points, mu, lr, batch, steps, ema",
    [
        ("cifar10", 18, 0.0, 4e-4, 512, 800_000, 0.9999),  # CM Table 3
        ("imagenet64", 40, 0.95, 8e-6, 2048, 600_000, 0.999943),  # CM Table 3 / launch.sh
    ],
)
def test_cd_rows_have_the_papers_settings(preset, points, mu, lr, batch, steps, ema):
    run = parse_run_config(presets.run_config(preset, "cd"))
    loss = build_loss(run.loss, run.model)  # the teacher is read when training starts
    assert (loss.cfg.num_points, loss.cfg.target_ema, loss.cfg.metric) == (points, mu, "lpips")
    assert (loss.cfg.weighting, loss.cfg.rho) == ("uniform", 7.0)  # lambda = 1 (CM)
    t = run.train
    assert (t.lr, t.batch, t.total_steps, t.ema_rate) == (lr, batch, steps, ema)
    assert loss.cfg.teacher == f"results/{preset}/runs/edm/network-final.pt"
    teacher = parse_run_config(presets.run_config(preset, "edm"))
    assert teacher.model.kind == "edm" and teacher.model.net.resolution == run.model.net.resolution
    assert len(loss.cfg.teacher_id) == 16
