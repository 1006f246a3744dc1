"""Attacks: native torch implementations registered by name.

Installed as ``arange.attacks``. Every attack is an optimiser over a threat model and an objective
that the task supplies; the model is passed at call time.
"""

from .base import Attack, AttackResult, Misclassification, Objective, input_gradients_only
from .fgsm import FGSM
from .noise import UniformNoise
from .pgd import PGD

__all__ = ["Attack", "AttackResult", "FGSM", "Misclassification", "Objective", "PGD",
           "UniformNoise", "input_gradients_only"]
