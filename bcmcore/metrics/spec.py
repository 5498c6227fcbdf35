"""The evaluation sweep spec (`bcm eval --spec FILE`): YAML or JSON, validated into frozen
dataclasses.

Example (demo digits; CIFAR-10 would use features {kind: inception, mode: legacy_tensorflow,
inception_path: ...}):

    dataset: results/digits/shards        # shard dir (manifest.json); reference split for FID/PR
    ref_split: train
    features: {kind: demo}
    num_samples: 1000                    # seeds seed .. seed+num_samples-1
    models:
      - name: bcm_ft
        network: results/digits/runs/bcm_ft/network-final.pt
        kind: bcm
        samplers: [{recipe: demo-nfe1}, {recipe: demo-nfe2}, {recipe: demo-nfe4}]
        inversions: [{times: [0.07, 80]}, {times: [0.07, 2.0, 80]}]
      - {name: igct, network: ..., kind: igct, guidance: {ws: [1, 3, 5], edits: 100}}
      - {name: edm, network: ..., kind: edm, guidance: {ws: [1, 3, 5], recipe: edm-18}}
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from bcmcore import recipes, sampling
from bcmcore.config import (
    Bound,
    ConfigError,
    Count,
    NonNegative,
    Pos,
    UserError,
    checked,
    from_dict,
    load_yaml,
)
from bcmcore.paths import check_name

Time = Annotated[float, NonNegative]  # noise levels t (EDM sigma): >= 0 (a last step may reach 0)


@dataclass(frozen=True)
@checked
class FeaturesConfig:
    kind: Literal["inception", "demo", "raw"] = (
        "demo"  # raw: vector data are their own features (toy)
    )
    mode: Literal["clean", "legacy_tensorflow"] = "clean"
    inception_path: str = ""  # the staged inception-2015-12-05.pt (or its folder)
    # StyleGAN2-ADA vgg16.pt: guidance rows' VGG16 precision/recall (iGCT); unset: the features
    # above stand in
    vgg16_path: str = ""
    # torchvision alexnet-owt-7be5be79.pth: LPIPS-AlexNet (iGCT); unset: a demo stand-in (demo set)
    lpips_path: str = ""


@dataclass(frozen=True)
@checked
class SamplerSpec:
    """One generation setting: a named `recipes.RECIPES` entry, or a `sampling.SAMPLERS` name +
    times/pairs/steps turned into a recipe by `recipes.build`, the rule of `bcm sample`:
    generation ends at eps ({sampler: ancestral, times: [80, 2.4]} is 80 -> 2.4 -> eps; heun
    without times: an 18-point Karras grid, then 0; docs/interfaces.md)."""

    recipe: str = ""
    sampler: str = ""  # a sampling.SAMPLERS name
    times: tuple[Time, ...] = ()
    pairs: tuple[tuple[float, float], ...] = ()  # zigzag rounds (eps_i, t_i)
    steps: int | None = None  # heun: Karras grid points (default 18); igct: 1 or 2 (default 1)
    name: str = ""  # label in tables/plots; default: the sampler

    def resolve(self, where, kind=None):
        """The Recipe this setting names (resolved on a model's sigmas by the sweep); kind: the
        model kind it must run on."""
        if self.recipe:
            if self.sampler or self.times or self.pairs or self.steps is not None:
                raise ConfigError(
                    f"{where}: give either 'recipe' or 'sampler'/'times'/'pairs'/'steps', not both"
                )
            try:
                r = recipes.get_recipe(self.recipe)
            except UserError as e:
                raise ConfigError(f"{where}.recipe: {e}") from None
        elif self.sampler not in sampling.SAMPLERS:
            raise ConfigError(
                f"{where}.sampler: expected one of {list(sampling.SAMPLERS)} or a recipe, "
                f"got {self.sampler!r}"
            )
        else:
            try:
                return recipes.build(
                    self.sampler, self.times, self.pairs, self.steps, kind, recipes.SPEC_KEYS
                )
            except UserError as e:
                raise ConfigError(f"{where}: {e}") from None
        kinds = sampling.SAMPLERS[r.method].kinds
        if kind is not None and kind not in kinds:
            raise ConfigError(
                f"{where}: sampler {r.method!r} runs on kind {' or '.join(kinds)}, "
                f"not on this {kind!r} model"
            )
        return r


@dataclass(frozen=True)
@checked
class InversionSpec:
    """bcm: Alg. 5 along increasing `times`, decode along `gen_times` (default 1 step t_M -> eps);
    igct: noiser + denoiser (no times); edm: Heun ODE over a `steps`-point Karras grid both ways."""

    times: tuple[Time, ...] = ()
    gen_times: tuple[Time, ...] = ()
    steps: Pos = 18
    initial_noise: bool = True  # BCM's small noise t_0 z before inverting (off: exact-model tests)


@dataclass(frozen=True)
@checked
class GuidanceSpec:
    ws: tuple[Annotated[float, NonNegative], ...] = (1.0,)  # paper convention, w = 1: no guidance
    steps: Pos = 1  # iGCT denoiser calls
    recipe: str = "edm-18"  # CFG-EDM Heun schedule
    edits: Count = 0  # class editing: this many inversion-split images, each edited into
    # every other class per w; the demo classifier scores the target hits


@dataclass(frozen=True)
@checked
class ModelSpec:
    name: str
    network: str
    kind: Literal["cm", "bcm", "edm", "igct"]
    samplers: tuple[SamplerSpec, ...] = ()
    inversions: tuple[InversionSpec, ...] = ()
    jpeg: tuple[tuple[float, ...], ...] = ()  # restoration inversion schedules (BCM App. B.1.2)
    guidance: GuidanceSpec | None = None


@dataclass(frozen=True)
@checked
class EvalSpec:
    dataset: str
    models: tuple[ModelSpec, ...]
    ref_split: str = "train"
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    num_samples: Pos = 50_000
    seed: Count = 0
    batch_size: Pos = 256
    labels: Literal["uniform", "data"] = (
        "uniform"  # class labels of conditional samples (iGCT: data)
    )
    pr_k: Pos = 3
    pr_real: Pos = 50_000  # real features kept for precision/recall (iGCT's VGG16 P/R: up to 200k)
    kid_subsets: Pos = 100  # KID: MMD^2 over this many random subsets ...
    kid_subset_size: Pos = 1000  # ... of at most this many samples from each set
    is_splits: Pos = 10  # Inception Score splits
    inversion_split: str = "test"
    inversion_count: Pos = 10_000
    jpeg_quality: Annotated[int, Bound(ge=1, le=95)] = 20
    grid: Count = 64  # samples per PNG grid
    clamp: bool = True  # clip generated images to [-1, 1]
    # keep each FID / guidance row's images as samples/<model>-<sampler or w>.npz (uint8 NHWC arr_0,
    # ADM's batch layout; labels arr_1, seeds), to rescore with `bcm eval --images`
    save_samples: bool = False


def _check(spec, path):
    for i, m in enumerate(spec.models):  # names become grid / table file names (bcmcore/paths.py)
        check_name(m.name, f"models[{i}].name")
        for j, s in enumerate(m.samplers):
            if s.name:
                check_name(s.name, f"models[{i}].samplers[{j}].name")
    names = [m.name for m in spec.models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: models: duplicate name {dup[0]!r}")
    if spec.num_samples < 1 or spec.batch_size < 1:
        raise ConfigError(f"{path}: num_samples and batch_size must be positive")
    for i, m in enumerate(spec.models):
        for j, s in enumerate(m.samplers):
            s.resolve(f"models[{i}].samplers[{j}]", m.kind)
        if m.guidance and m.kind not in ("igct", "edm"):
            raise ConfigError(
                f"models[{i}].guidance: guidance sweeps need kind igct or edm, got {m.kind!r}"
            )
        if m.guidance and m.guidance.edits:
            if m.guidance.edits < 0 or spec.features.kind != "demo":
                raise ConfigError(
                    f"models[{i}].guidance.edits: the edit success rate needs a count >= 0 and "
                    f"features.kind 'demo' (its classifier judges the edits), got "
                    f"{m.guidance.edits} with features.kind {spec.features.kind!r}"
                )
        if m.inversions and m.kind == "cm":
            raise ConfigError(
                f"models[{i}].inversions: a cm model cannot invert (it maps only to sigma_min); "
                "use a bcm, igct or edm model"
            )
        if m.kind == "bcm" and any(len(v.times) < 2 for v in m.inversions):
            raise ConfigError(
                f"models[{i}].inversions: bcm inversion needs increasing 'times' (t_0 .. t_M)"
            )
        if m.jpeg and m.kind != "bcm":
            raise ConfigError(
                f"models[{i}].jpeg: JPEG restoration needs a bcm model, got {m.kind!r}"
            )
    return spec


def load_spec(path):
    """Read and validate a sweep spec; every mistake names the file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: eval spec not found")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = load_yaml(path, text)
    except ConfigError:
        raise
    except Exception as e:
        raise UserError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({e})"
        ) from None
    try:
        return _check(from_dict(EvalSpec, data, "spec"), path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
