"""Attacks: native torch implementations and ART / foolbox adapters, registered by name.

Installed as ``arange.attacks``. Every attack is an optimiser over a threat model and an objective
that the task supplies; the model is passed at call time. Suites (``suite: standard`` in a
scenario) are named recipes of attacks run as a cascade (:mod:`.suites`).
"""

from . import adapters
from .apgd import APGD
from .base import Attack, AttackResult, Misclassification, Objective, input_gradients_only
from .fab import FAB
from .fgsm import FGSM
from .nes import HashNES
from .noise import UniformNoise
from .pgd import PGD
from .square import Square
from .suites import SUITES, Component, StandardSuite, Suite

__all__ = [
           "APGD",
           "FAB",
           "FGSM",
           "PGD",
           "SUITES",
           "Attack",
           "AttackResult",
           "Component",
           "HashNES",
           "Misclassification",
           "Objective",
           "Square",
           "StandardSuite",
           "Suite",
           "UniformNoise",
           "adapters",
           "input_gradients_only",
]
