"""Evaluation: Fréchet distance on classifier features and the bundled model's quality gate."""
from .frechet import FeatureStats, frechet_distance

__all__ = ["FeatureStats", "frechet_distance"]
