"""Adapters: ART, foolbox and reference AutoAttack attacks under registry names (``art.apgd``,
``foolbox.fmn``, ``autoattack.reference``, ...).

A scenario names them like native attacks; the runner enforces their budget and scores them the
same way. The libraries are imported only when an adapter is validated or run.
"""

from . import art, autoattack, foolbox
from .base import LibraryAdapter, QueryCounter

__all__ = ["LibraryAdapter", "QueryCounter", "art", "autoattack", "foolbox"]
