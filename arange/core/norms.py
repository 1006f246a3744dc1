"""The norms a threat model measures perturbations in (torch-free, so that scenario models and
scorecard readers such as the dashboard load without torch; :mod:`arange.threat` computes
them)."""

from __future__ import annotations

from enum import Enum


class Norm(str, Enum):
    linf = "linf"
    l2 = "l2"
