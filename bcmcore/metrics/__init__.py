"""Evaluation: FID through clean-fid, improved precision/recall, IS, KID, PSNR / SSIM / LPIPS,
reconstruction MSE, sweeps and reports.

Public API (docs/interfaces.md, metrics):
  fid.frechet_distance / fid_from_feats / feature_stats / reference_stats
  prdc.precision_recall(real, fake, k=3)
  inception_score.inception_score(probs, splits=10); kid.kid(real, fake)
  image_quality.psnr / ssim(x_uint8, y_uint8); perceptual.lpips_alex(path) / demo_lpips(shard_dir)
  vgg16.vgg16_extractor(path); staged: the weight files and where their checksums come from
  features.inception_extractor(path, mode) / demo_extractor(shard_dir) / build_extractor(cfg,
  shard_dir); demo_classifier.load_demo_classifier(shard_dir) -> model with .classify(x),
  .features(x), .test_accuracy; spec.load_spec(path); sweep.run(spec, out_dir) (`bcm eval`)
"""

import importlib

# Lazy exports: `bcm sample` imports metrics.report for grids and must not pay for
# clean-fid/torchvision.
_EXPORTS = {
    "load_demo_classifier": "demo_classifier",
    "fid_from_feats": "fid",
    "frechet_distance": "fid",
    "precision_recall": "prdc",
    "psnr": "image_quality",
    "ssim": "image_quality",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"bcmcore.metrics.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
