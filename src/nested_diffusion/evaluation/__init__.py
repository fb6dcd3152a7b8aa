"""Evaluation: Fréchet distance on classifier features, the bundled model's quality gate, and the anytime
evaluations of the paper (log-FD-per-NFE AUC, budget table, consistency, qualitative figure)."""
from .frechet import FeatureStats, frechet_distance
from .auc import CurrentUpdate, UpdateSchedule, anytime_auc, current_update, nfe_marks, values_at_marks
from .features import ClassifierFeatures, PrecomputedFeatures, extract_features, load_feature_classifier
from .distances import (FrechetToReference, ReferenceStats, kid_from_features, load_reference_stats, make_fd_metric,
                        make_kid_metric, precision_recall, save_reference_stats)
from .consistency import ConsistencyMetric, FeatureCosineDistance, MSEDistance, build_consistency_metrics
from .reference import EvalReference, fashion_reference, reference_from_images
from .snapshots import SamplerFactory, Snapshots, bundled_factory, collect_snapshots, snapshot_stream
from .runners import run_budget_table, run_consistency, run_qualitative, run_rnd_sweep

__all__ = ["FeatureStats", "frechet_distance", "CurrentUpdate", "UpdateSchedule", "anytime_auc", "current_update",
           "nfe_marks", "values_at_marks", "ClassifierFeatures", "PrecomputedFeatures", "extract_features",
           "load_feature_classifier", "FrechetToReference", "ReferenceStats", "kid_from_features",
           "load_reference_stats", "make_fd_metric", "make_kid_metric", "precision_recall", "save_reference_stats",
           "ConsistencyMetric", "FeatureCosineDistance", "MSEDistance", "build_consistency_metrics", "EvalReference",
           "fashion_reference", "reference_from_images", "SamplerFactory", "Snapshots", "bundled_factory",
           "collect_snapshots", "snapshot_stream", "run_budget_table", "run_consistency", "run_qualitative",
           "run_rnd_sweep"]
