"""The installed arange version (a module of its own, so the core can read it without
importing the package's API)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("arange")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
