"""Adapters for foolbox 3 attacks.

The target is handed to foolbox once, as ``PyTorchModel(bounds=threat bounds, device=...)`` (the
target normalises inside, so no ``preprocessing``). Tensors stay on the device: foolbox works on
torch tensors through eagerpy. eps comes from the threat model and goes in as foolbox's
``epsilons``; foolbox returns the clipped adversarials, which the runner checks again. Parameter
names and defaults are foolbox's own, read from the wrapped constructor.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from arange.threat import Norm, ThreatModel

from ..base import AttackResult, Objective
from .base import LibraryAdapter, QueryCounter, library_seed, register_adapter, seed_from

_NOISE_DRAWS = 20


class FoolboxAdapter(LibraryAdapter):
    library = "foolbox"
    # norm -> foolbox attack class name; the first one gives the signature.
    fb_names: ClassVar[dict[Norm, str]] = {}
    # Decision-based attacks start from an adversarial point (see _starting_points).
    needs_start: ClassVar[bool] = False

    @classmethod
    def wrapped(cls) -> Any:
        return cls.fb_class(cls.norms[0])

    @classmethod
    def fb_class(cls, norm: Norm) -> Any:
        import foolbox.attacks as fa
        return getattr(fa, cls.fb_names[norm])

    def build(self, norm: Norm) -> Any:
        return self.fb_class(norm)(**self.library_params())

    def validate(self) -> None:
        for norm in self.norms:
            self.build(norm)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        import foolbox as fb

        self._classification_only(objective)
        target = QueryCounter(model, x.dtype)
        fmodel = fb.PyTorchModel(target, bounds=threat.bounds, device=x.device)
        attack = self.build(threat.norm)
        x = x.detach()
        x_adv = x.clone()
        kwargs: dict[str, Any] = {}
        idx = torch.arange(x.shape[0], device=x.device)
        if self.needs_start:
            start, has = self._starting_points(target, x, y, threat, generator)
            idx = has.nonzero().squeeze(1)
            kwargs["starting_points"] = start[idx]
        if idx.numel():
            with library_seed(seed_from(generator), x.device):
                _, clipped, _ = attack(fmodel, x[idx], fb.criteria.Misclassification(y[idx]),
                                       epsilons=threat.eps, **kwargs)
            x_adv[idx] = clipped.detach()
        queries = None
        if self.kind == "black-box":
            # foolbox does not report per-sample queries: the mean over the batch is exact.
            queries = torch.full((x.shape[0],), target.count / max(x.shape[0], 1),
                                 device=x.device)
        return AttackResult(x_adv, queries=queries)

    @staticmethod
    @torch.no_grad()
    def _starting_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                         generator: torch.Generator | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial starting points for decision-based attacks, using labels only: the
        closest image of the batch that the model puts in another class, else uniform noise
        that it misclassifies. Samples without one are left unattacked."""
        pred = model(x).argmax(1)
        flat = x.flatten(1)
        dist = torch.cdist(flat, flat)
        dist = dist.masked_fill(pred[None, :] == y[:, None], float("inf"))
        nearest = dist.argmin(dim=1)
        has = torch.isfinite(dist.gather(1, nearest[:, None]).squeeze(1))
        start = x[nearest].clone()
        lo, hi = threat.bounds
        for _ in range(_NOISE_DRAWS):
            if bool(has.all()):
                break
            noise = lo + (hi - lo) * torch.rand(x.shape, device=x.device, dtype=x.dtype,
                                                generator=generator)
            ok = (model(noise).argmax(1) != y) & ~has
            start = torch.where(ok.view((-1,) + (1,) * (x.dim() - 1)), noise, start)
            has |= ok
        return start, has


@register_adapter("foolbox.fgsm", "foolbox FGSM / FGM (LinfFastGradientAttack, "
                  "L2FastGradientAttack), for cross-checking the native fgsm")
class FoolboxFGSM(FoolboxAdapter):
    fb_names: ClassVar[dict[Norm, str]] = {Norm.linf: "LinfFastGradientAttack",
                                           Norm.l2: "L2FastGradientAttack"}
    restart_params = ()


@register_adapter("foolbox.linf_pgd", "foolbox LinfPGD: projected gradient descent, L-inf")
class FoolboxLinfPGD(FoolboxAdapter):
    iterative = True
    norms = (Norm.linf,)
    fb_names: ClassVar[dict[Norm, str]] = {Norm.linf: "LinfPGD"}
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"steps": 3}


@register_adapter("foolbox.l2_pgd", "foolbox L2PGD: projected gradient descent, L2")
class FoolboxL2PGD(FoolboxAdapter):
    iterative = True
    norms = (Norm.l2,)
    fb_names: ClassVar[dict[Norm, str]] = {Norm.l2: "L2PGD"}
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"steps": 3}


@register_adapter("foolbox.fmn", "foolbox FMN (Pintor et al.): fast minimum-norm attack, L-inf "
                  "or L2, clipped to the eps-ball")
class FoolboxFMN(FoolboxAdapter):
    iterative = True
    minimal_norm = True
    managed = frozenset({"init_attack"})
    fb_names: ClassVar[dict[Norm, str]] = {Norm.linf: "LInfFMNAttack", Norm.l2: "L2FMNAttack"}
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"steps": 5, "binary_search_steps": 3}


@register_adapter("foolbox.boundary", "foolbox BoundaryAttack (Brendel et al.): decision-based "
                  "black-box attack (labels only), L2, clipped to the eps-ball; reports queries")
class FoolboxBoundary(FoolboxAdapter):
    kind = "black-box"
    iterative = True
    minimal_norm = True
    norms = (Norm.l2,)
    managed = frozenset({"init_attack", "tensorboard"})
    fb_names: ClassVar[dict[Norm, str]] = {Norm.l2: "BoundaryAttack"}
    needs_start = True
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"steps": 20}
