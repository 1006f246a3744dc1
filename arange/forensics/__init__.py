"""The inpainting-forgery range: detectors that localise inpainted regions, scored per inpainter
(seen and unseen in training), under benign perturbations and adversarial evasion.

* :mod:`.masks` - free-form brush-stroke and box masks (DeepFill v2 style).
* :mod:`.inpainters` - OpenCV Telea / Navier-Stokes, scikit-image biharmonic and a small gated
  convolution GAN (:mod:`.gan`) trained here; every fill is pasted back only inside the mask.
* :mod:`.detector` - the noise-residual multi-scale detector (SRM + Bayar + RGB stems).
* :mod:`.training` - cached, resumable training of detectors and of the GAN inpainter.
* :mod:`.data` - train/test split of the embedded photographs and the forgery sets.
* :mod:`.metrics` - pixel AUC, F1, IoU, boundary-excluded F1, image AUC, bootstrap intervals.
* :mod:`.scenario`, :mod:`.runner`, :mod:`.scorecard` - the ``forgery_localization`` task.
"""

from __future__ import annotations
