"""Defenses: wrappers around a target model, registered by name.

Installed as ``arange.defenses``.
"""

from .adv_training import FastAdversarialTraining, PGDAdversarialTraining
from .base import Defense, DefenseContext, NoDefense
from .denoiser import Denoiser
from .transforms import (
    JPEG,
    BitDepth,
    GaussianNoise,
    InputTransform,
    Median,
    RandomResizePad,
    TotalVariation,
    TransformedModel,
)

__all__ = ["JPEG", "BitDepth", "Defense", "DefenseContext", "Denoiser", "FastAdversarialTraining",
           "GaussianNoise", "InputTransform", "Median", "NoDefense", "PGDAdversarialTraining",
           "RandomResizePad", "TotalVariation", "TransformedModel"]
