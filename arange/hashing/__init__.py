"""The perceptual-hash range: matchers (hash + threshold + database of images) under black-box
detection avoidance, white-box evasion and targeted collision attacks.

* :mod:`.reference` - the reference implementations (imagehash, pdqhash): the oracle.
* :mod:`.fast` - batched torch hashes reproducing the reference bits, and differentiable
  surrogates.
* :mod:`.data` - the embedded photographs and ``imagefolder``.
* :mod:`.attacks` - NES (black-box), PGD through the surrogate (white-box), objectives.
* :mod:`.scenario`, :mod:`.runner`, :mod:`.scorecard`, :mod:`.task` - the ``hash_matching``
  task. Nothing is imported here, so the scorecard model stays torch-free for the dashboard.
"""

from __future__ import annotations
