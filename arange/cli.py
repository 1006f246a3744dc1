"""The ``arange`` command line.

Exit status: 0 success, 1 a failed check (``--strict``) or gate, 2 bad input (one message on
stderr, no traceback, nothing half-written).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ArangeError

log = logging.getLogger("arange")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors are bad input too: exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"arange: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="arange", description="AI security range: attack image models, score "
                "their robustness with evidence, gate releases on it.")
    p.add_argument("--version", action="version", version=f"arange {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a scenario and write a scorecard")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--out", help="run folder (default: runs/<scenario name>)")
    r.add_argument("--device", help="override the scenario's device (auto, cpu, cuda, cuda:N)")
    r.add_argument("--fresh", action="store_true",
                   help="discard finished jobs in the run folder instead of resuming")
    r.add_argument("--strict", action="store_true",
                   help="exit 1 when any evaluation-validity check fails")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    v = sub.add_parser("validate", help="check a scenario file without running it")
    v.add_argument("scenario")

    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument("kind", choices=["models", "datasets", "attacks", "defenses"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "validate":
            return _cmd_validate(args)
        if args.command == "list":
            return _cmd_list(args)
    except ArangeError as e:
        print(f"arange: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arange: interrupted; finished jobs are kept, run the same command to resume",
              file=sys.stderr)
        return 130
    return 2


def _cmd_validate(args: argparse.Namespace) -> int:
    from .scenario import load_scenario
    s = load_scenario(args.scenario)
    print(f"{args.scenario}: ok ({s.task}, {len(s.gates)} gates)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import KINDS
    reg = KINDS[args.kind]
    entries = list(reg.entries())
    width = max((len(e.name) for e in entries), default=0)
    for e in entries:
        extra = ""
        kind = getattr(e.obj, "kind", None)
        if args.kind == "attacks" and isinstance(kind, str):
            extra = f"[{kind}] "
        print(f"{e.name.ljust(width)}  {extra}{e.description}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_scenario
    from .scenario import Scenario, load_scenario

    s = load_scenario(args.scenario)
    out = Path(args.out) if args.out else Path("runs") / s.name
    if args.fresh and (out / "jobs").is_dir():
        shutil.rmtree(out / "jobs")
    options = {"device": args.device, "progress": not args.quiet, "scenario_path": args.scenario}
    if isinstance(s, Scenario):
        card = run_scenario(s, out, **options)
        print(format_summary(card))
    else:
        from .tasks import get_task
        task = get_task(s.task)
        card = task.run(s, out, **options)
        print(task.summary(card))
    print(f"\nscorecard: {out / 'scorecard.json'}")
    failed = [c for c in card.checks if c.status == "fail"]
    if args.strict and failed:
        print(f"arange: {len(failed)} validity check(s) failed (--strict)", file=sys.stderr)
        return 1
    return 0


def format_summary(card: object) -> str:
    """A plain-text robustness table for the terminal."""
    from .scorecard import Scorecard
    assert isinstance(card, Scorecard)
    lines = [f"{card.name}: {card.provenance.dataset} ({card.clean[0].n} samples), "
             f"device {card.provenance.device}, {card.provenance.seconds:.1f}s"]
    for c in card.clean:
        lo, hi = c.accuracy_ci
        lines.append(f"clean accuracy [{c.defense}]: {c.accuracy:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    header = f"{'defense':<12} {'attack':<14} {'norm':<5} {'eps':>8} {'robust acc':>10} " \
             f"{'95% CI':>13} {'success':>8} {'max pert':>9} {'secs':>7}"
    lines += ["", header, "-" * len(header)]
    for r in card.results:
        lo, hi = r.robust_accuracy_ci
        lines.append(f"{r.defense:<12} {r.attack:<14} {r.norm:<5} {r.eps_label:>8} "
                     f"{r.robust_accuracy:>10.3f} {f'{lo:.3f}-{hi:.3f}':>13} "
                     f"{r.attack_success_rate:>8.3f} {r.perturbation_max:>9.4f} {r.seconds:>7.1f}")
    for w in card.worst_case:
        lo, hi = w.robust_accuracy_ci
        lines.append(f"{w.defense:<12} {'worst case':<14} {w.norm:<5} {w.eps_label:>8} "
                     f"{w.robust_accuracy:>10.3f} {f'{lo:.3f}-{hi:.3f}':>13}")
    lines.append("")
    lines.append("checks:")
    for c in card.checks:
        lines.append(f"  [{c.status:>4}] {c.name}: {c.message}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
