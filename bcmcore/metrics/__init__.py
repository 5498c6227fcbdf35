"""Evaluation: FID through clean-fid, improved precision/recall, reconstruction MSE, sweeps and reports.

Public API (docs/interfaces.md, metrics):
  fid.frechet_distance / fid_from_feats / feature_stats / reference_stats
  prdc.precision_recall(real, fake, k=3)
  features.inception_extractor(path, mode) / demo_extractor(shard_dir) / build_extractor(cfg, shard_dir)
  demo_classifier.load_demo_classifier(shard_dir) -> model with .classify(x), .features(x), .test_accuracy
  spec.load_spec(path); sweep.run(spec, out_dir); cli.main(argv)  (`bcm eval`)
"""
from bcmcore.metrics.demo_classifier import load_demo_classifier
from bcmcore.metrics.fid import fid_from_feats, frechet_distance
from bcmcore.metrics.prdc import precision_recall

__all__ = ["load_demo_classifier", "fid_from_feats", "frechet_distance", "precision_recall"]
