"""The perceptual-hash range: matchers (hash + threshold + database of images) under black-box
detection avoidance, white-box evasion and targeted collision attacks.

* :mod:`.reference` - the reference implementations (imagehash, pdqhash): the oracle.
* :mod:`.fast` - batched torch hashes reproducing the reference bits, and differentiable
  surrogates.
* :mod:`.data` - the embedded photographs and ``imagefolder``.
* :mod:`.attacks` - NES (black-box), PGD through the surrogate (white-box), objectives.
* :mod:`.scenario`, :mod:`.runner`, :mod:`.scorecard` - the ``hash_matching`` task.
"""

from __future__ import annotations

from .fast import FAST_HASHES, HashSurrogate, fast_hash
from .reference import HASHES, reference_bits, reference_bits_batch

__all__ = ["FAST_HASHES", "HASHES", "HashSurrogate", "fast_hash", "reference_bits",
           "reference_bits_batch"]
