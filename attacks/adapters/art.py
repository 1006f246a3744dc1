"""Adapters for the Adversarial Robustness Toolbox (ART) evasion attacks.

The target is handed to ART once, as a ``PyTorchClassifier`` on the same device with
``clip_values`` equal to the threat model's bounds (the target already normalises inside, so no
``preprocessing``). The images cross to numpy once on the way in and back once on the way out.
eps and norm come from the scenario's threat model; arange sets the batch size, untargeted mode
and silence. Parameter names and defaults are ART's own, read from the wrapped constructor.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

import torch
from torch import nn

from arange.errors import ArangeError
from arange.threat import Norm, ThreatModel, project

from ..base import AttackResult, Objective
from .base import (
    LibraryAdapter,
    QueryCounter,
    library_seed,
    norm_value,
    register_adapter,
    seed_from,
)

log = logging.getLogger(__name__)


def _evasion(name: str) -> Any:
    from art.attacks import evasion
    return getattr(evasion, name)


def make_classifier(model: nn.Module, input_shape: tuple[int, ...], nb_classes: int,
                    bounds: tuple[float, float], device: torch.device) -> Any:
    """The ART view of a target that takes [0, 1] images and normalises inside."""
    from art.estimators.classification import PyTorchClassifier

    if device.type == "cuda":
        ctx: Any = torch.cuda.device(device)
    else:
        import contextlib
        ctx = contextlib.nullcontext()
    with ctx:
        return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(),
                                 input_shape=input_shape, nb_classes=nb_classes,
                                 clip_values=bounds,
                                 device_type="gpu" if device.type == "cuda" else "cpu")


@functools.lru_cache(maxsize=1)
def _validation_classifier() -> Any:
    """A tiny classifier used only to let ART check parameter values at scenario load."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    return make_classifier(model, (3, 8, 8), 10, (0.0, 1.0), torch.device("cpu"))


class ARTAdapter(LibraryAdapter):
    library = "ART"
    art_name: ClassVar[str] = ""

    @classmethod
    def wrapped(cls) -> Any:
        return _evasion(cls.art_name)

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        """The configured ART attack for this threat model."""
        raise NotImplementedError

    def validate(self) -> None:
        self.build(_validation_classifier(), ThreatModel(self.norms[0], 0.1), 32)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        self._classification_only(objective)
        with torch.no_grad():
            nb_classes = int(model(x[:1]).shape[1])
        target = QueryCounter(model, x.dtype)
        seed = seed_from(generator)
        with library_seed(seed, x.device):
            clf = make_classifier(target, tuple(x.shape[1:]), nb_classes, threat.bounds, x.device)
            attack = self.build(clf, threat, int(x.shape[0]))
            x_np = x.detach().cpu().float().numpy().copy()  # ART may write into it
            try:
                adv = attack.generate(x=x_np, y=y.detach().cpu().numpy())
            except ValueError as e:
                raise ArangeError(f"{self.registered_name()}: ART could not attack this "
                                  f"target: {e}") from e
        x_adv = torch.from_numpy(adv).to(device=x.device, dtype=x.dtype)
        if self.minimal_norm:
            x_adv = project(x, x_adv, threat)
        queries = None
        if self.kind == "black-box":
            # ART does not report per-sample queries: the mean over the batch is exact.
            queries = torch.full((x.shape[0],), target.count / max(x.shape[0], 1),
                                 device=x.device)
        return AttackResult(x_adv, queries=queries)


@register_adapter("art.fgsm", "ART FastGradientMethod: one gradient step of size eps (FGSM / "
                  "FGM), for cross-checking the native fgsm")
class ARTFGSM(ARTAdapter):
    art_name = "FastGradientMethod"
    managed = frozenset({"estimator", "norm", "eps", "eps_step", "targeted", "batch_size",
                         "minimal", "summary_writer"})
    restart_params = ()

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        return self.wrapped()(classifier, norm=norm_value(threat.norm), eps=threat.eps,
                              eps_step=threat.eps, targeted=False, batch_size=batch_size,
                              **self.library_params())


@register_adapter("art.pgd", "ART ProjectedGradientDescent (Madry et al.), for cross-checking "
                  "the native pgd; step size rel_stepsize * eps")
class ARTPGD(ARTAdapter):
    art_name = "ProjectedGradientDescent"
    iterative = True
    managed = frozenset({"estimator", "norm", "eps", "eps_step", "targeted", "batch_size",
                         "summary_writer", "verbose", "random_eps"})
    extra: ClassVar[dict[str, Any]] = {"rel_stepsize": 0.25}
    step_params = ("max_iter",)
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"max_iter": 3}

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        return self.wrapped()(classifier, norm=norm_value(threat.norm), eps=threat.eps,
                              eps_step=self.config["rel_stepsize"] * threat.eps,
                              targeted=False, batch_size=batch_size, verbose=False,
                              **self.library_params())


@register_adapter("art.apgd", "ART AutoProjectedGradientDescent (APGD), loss_type "
                  "cross_entropy or difference_logits_ratio, L-inf or L2")
class ARTAPGD(ARTAdapter):
    art_name = "AutoProjectedGradientDescent"
    iterative = True
    managed = frozenset({"estimator", "norm", "eps", "eps_step", "targeted", "batch_size",
                         "verbose"})
    overrides: ClassVar[dict[str, Any]] = {"loss_type": "cross_entropy"}
    step_params = ("max_iter",)
    restart_params = ("nb_random_init",)
    test_params: ClassVar[dict[str, Any]] = {"max_iter": 5, "nb_random_init": 1}

    def validate(self) -> None:
        if self.config["loss_type"] not in ("cross_entropy", "difference_logits_ratio"):
            raise ValueError("argument loss_type must be cross_entropy or "
                             f"difference_logits_ratio (got {self.config['loss_type']!r})")
        super().validate()

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        # APGD's initial step is 2 * eps (Croce & Hein 2020); ART calls it eps_step.
        return self.wrapped()(classifier, norm=norm_value(threat.norm), eps=threat.eps,
                              eps_step=2 * threat.eps, targeted=False, batch_size=batch_size,
                              verbose=False, **self.library_params())


@register_adapter("art.autoattack", "ART AutoAttack: APGD-CE, APGD-DLR, DeepFool and Square "
                  "on still-robust samples; budgets set by max_iter / square_max_iter")
class ARTAutoAttack(ARTAdapter):
    art_name = "AutoAttack"
    iterative = True
    managed = frozenset({"estimator", "norm", "eps", "eps_step", "attacks", "batch_size",
                         "estimator_orig", "targeted", "parallel_pool_size"})
    # ART's AutoAttack takes its attacks as objects; these set their budgets (ART's defaults).
    extra: ClassVar[dict[str, Any]] = {"max_iter": 100, "nb_random_init": 5,
                                       "deepfool_max_iter": 100, "square_max_iter": 5000,
                                       "square_restarts": 5}
    step_params = ("max_iter", "square_max_iter", "deepfool_max_iter")
    restart_params = ("nb_random_init",)
    test_params: ClassVar[dict[str, Any]] = {"max_iter": 4, "nb_random_init": 1,
                                             "deepfool_max_iter": 3, "square_max_iter": 10,
                                             "square_restarts": 1}

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        c = self.config
        norm = norm_value(threat.norm)
        apgd = _evasion("AutoProjectedGradientDescent")
        attacks = [
            apgd(classifier, norm=norm, eps=threat.eps, eps_step=2 * threat.eps,
                 max_iter=c["max_iter"], targeted=False, nb_random_init=c["nb_random_init"],
                 batch_size=batch_size, loss_type=loss, verbose=False)
            for loss in ("cross_entropy", "difference_logits_ratio")]
        attacks.append(_evasion("DeepFool")(classifier, max_iter=c["deepfool_max_iter"],
                                            epsilon=1e-3, nb_grads=10, batch_size=batch_size,
                                            verbose=False))
        attacks.append(_evasion("SquareAttack")(classifier, norm=norm, eps=threat.eps,
                                                max_iter=c["square_max_iter"],
                                                nb_restarts=c["square_restarts"],
                                                batch_size=batch_size, verbose=False))
        return self.wrapped()(classifier, norm=norm, eps=threat.eps, eps_step=2 * threat.eps,
                              attacks=attacks, batch_size=batch_size, targeted=False)


@register_adapter("art.carlini_l2", "ART CarliniL2Method (Carlini & Wagner): minimal-L2 "
                  "optimisation attack, projected onto the eps-ball")
class ARTCarliniL2(ARTAdapter):
    art_name = "CarliniL2Method"
    iterative = True
    norms = (Norm.l2,)
    minimal_norm = True
    managed = frozenset({"classifier", "targeted", "batch_size", "verbose"})
    step_params = ("max_iter",)
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"max_iter": 3, "binary_search_steps": 1,
                                             "initial_const": 10.0, "learning_rate": 0.1,
                                             "max_halving": 1, "max_doubling": 1}

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        return self.wrapped()(classifier, targeted=False, batch_size=batch_size, verbose=False,
                              **self.library_params())


@register_adapter("art.deepfool", "ART DeepFool (Moosavi-Dezfooli et al.): minimal-L2 "
                  "linearisation attack, projected onto the eps-ball")
class ARTDeepFool(ARTAdapter):
    art_name = "DeepFool"
    iterative = True
    minimal_norm = True
    managed = frozenset({"classifier", "batch_size", "verbose"})
    # ART's default overshoot (1e-6) leaves examples on the decision boundary, where float
    # rounding flips many back; 0.02 is the overshoot of the DeepFool paper.
    overrides: ClassVar[dict[str, Any]] = {"epsilon": 0.02}
    step_params = ("max_iter",)
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"max_iter": 3}

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        return self.wrapped()(classifier, batch_size=batch_size, verbose=False,
                              **self.library_params())


@register_adapter("art.square", "ART SquareAttack: score-based black-box random search, L-inf "
                  "or L2; reports queries")
class ARTSquare(ARTAdapter):
    art_name = "SquareAttack"
    kind = "black-box"
    iterative = True
    managed = frozenset({"estimator", "norm", "eps", "adv_criterion", "loss", "batch_size",
                         "verbose"})
    step_params = ("max_iter",)
    restart_params = ("nb_restarts",)
    test_params: ClassVar[dict[str, Any]] = {"max_iter": 20}

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        return self.wrapped()(classifier, norm=norm_value(threat.norm), eps=threat.eps,
                              batch_size=batch_size, verbose=False, **self.library_params())


@register_adapter("art.hopskipjump", "ART HopSkipJump: decision-based black-box attack "
                  "(labels only), L2 or L-inf, projected onto the eps-ball; reports queries")
class ARTHopSkipJump(ARTAdapter):
    art_name = "HopSkipJump"
    kind = "black-box"
    iterative = True
    minimal_norm = True
    managed = frozenset({"classifier", "batch_size", "targeted", "norm", "verbose"})
    step_params = ("max_iter",)
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"max_iter": 1, "max_eval": 20, "init_eval": 5,
                                             "init_size": 10}

    def build(self, classifier: Any, threat: ThreatModel, batch_size: int) -> Any:
        return self.wrapped()(classifier, batch_size=batch_size, targeted=False,
                              norm=norm_value(threat.norm), verbose=False,
                              **self.library_params())
