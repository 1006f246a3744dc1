"""Adapters: ART and foolbox attacks under registry names (``art.apgd``, ``foolbox.fmn``, ...).

A scenario names them like native attacks; the runner enforces their budget and scores them the
same way. The libraries are imported only when an adapter is validated or run.
"""

from . import art, foolbox
from .base import LibraryAdapter, QueryCounter

__all__ = ["LibraryAdapter", "QueryCounter", "art", "foolbox"]
