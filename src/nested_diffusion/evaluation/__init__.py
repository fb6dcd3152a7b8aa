"""Evaluation of anytime samplers: Fréchet distance / KID (torchmetrics, any feature network), the anytime AUC,
budget table, consistency and qualitative runners. Runners take a ``SamplerFactory`` (any sampler); the bundled
model's factory, feature network and reference set live in ``bundled``."""
from .frechet import FeatureStats, frechet_distance
from .auc import CurrentUpdate, UpdateSchedule, anytime_auc, current_update, nfe_marks, values_at_marks
from .features import PrecomputedFeatures, extract_features
from .distances import (FrechetToReference, ReferenceStats, kid_from_features, load_reference_stats, make_fd_metric,
                        make_kid_metric, precision_recall, save_reference_stats)
from .consistency import ConsistencyMetric, FeatureCosineDistance, MSEDistance, build_consistency_metrics
from .reference import EvalReference, reference_from_images
from .snapshots import SamplerFactory, Snapshots, collect_config_snapshots, collect_snapshots, snapshot_stream
from .runners import run_budget_table, run_consistency, run_qualitative, run_rnd_sweep

__all__ = ["FeatureStats", "frechet_distance", "CurrentUpdate", "UpdateSchedule", "anytime_auc", "current_update",
           "nfe_marks", "values_at_marks", "PrecomputedFeatures", "extract_features",
           "FrechetToReference", "ReferenceStats", "kid_from_features",
           "load_reference_stats", "make_fd_metric", "make_kid_metric", "precision_recall", "save_reference_stats",
           "ConsistencyMetric", "FeatureCosineDistance", "MSEDistance", "build_consistency_metrics", "EvalReference",
           "reference_from_images", "SamplerFactory", "Snapshots", 
           "collect_config_snapshots", "collect_snapshots", "snapshot_stream", "run_budget_table", "run_consistency", "run_qualitative",
           "run_rnd_sweep"]
