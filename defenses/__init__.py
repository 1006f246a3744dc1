"""Defenses: wrappers around a target model, registered by name.

Installed as ``arange.defenses``.
"""

from .base import Defense, NoDefense

__all__ = ["Defense", "NoDefense"]
