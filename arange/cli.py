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
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ArangeError

if TYPE_CHECKING:
    from .gates import Evidence, Rule

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
    r.add_argument("--trust-code", action="store_true",
                   help="allow the scenario's python:FILE:CLASS models (runs that code)")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where jobs run: local (this process, default) or ray (a Ray cluster; "
                   "needs pip install \"arange[ray]\")")
    r.add_argument("--address", help="with --executor ray: the cluster to join (e.g. "
                   "ray://head:10001 or auto); default: $RAY_ADDRESS if set, else a local "
                   "Ray runtime that arange starts and stops")
    r.add_argument("--suite-reference", action="store_true",
                   help="also re-run the suite's samples with the reference AutoAttack and fail "
                   "the suite_reference check when the suite is significantly weaker (needs "
                   "pip install \"arange[autoattack]\")")
    r.add_argument("--gate", action="store_true",
                   help="evaluate the scenario's gates after the run; exit 1 if one fails")
    _add_gate_options(r)

    g = sub.add_parser("gate", help="evaluate the scenario's gates on a scorecard "
                       "(exit 0 pass, 1 fail, 2 bad input)")
    g.add_argument("scorecard", help="scorecard.json or the run folder holding it")
    _add_gate_options(g)

    b = sub.add_parser("baseline", help="record or show the accepted scorecard that "
                       "regression gates compare against")
    bsub = b.add_subparsers(dest="baseline_command", required=True, parser_class=_Parser)
    bs = bsub.add_parser("save", help="write a baseline file from a scorecard")
    bs.add_argument("scorecard", help="scorecard.json or the run folder holding it")
    bs.add_argument("--out", help="baseline file (default: baselines/<scenario name>.json "
                    "next to the scenario file)")
    bw = bsub.add_parser("show", help="summarise a baseline file")
    bw.add_argument("baseline")

    t = sub.add_parser("train", help="build the models a scenario's defenses train in the "
                       "range (adversarial training, denoisers) without running attacks")
    t.add_argument("scenario", help="scenario YAML file")
    t.add_argument("--defense", action="append", metavar="LABEL",
                   help="only this defense (label or name; repeatable)")
    t.add_argument("--device", help="override the scenario's device (auto, cpu, cuda, cuda:N)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.add_argument("--trust-code", action="store_true",
                   help="allow the scenario's python:FILE:CLASS models (runs that code)")

    ex = sub.add_parser("export", help="write a forensics detector the range trained as a file "
                        "(TorchScript, ONNX or torch.export) that a scenario can bring back")
    ex.add_argument("scenario", help="a forgery_localization scenario")
    ex.add_argument("--detector", help="the detector's label (default: the target)")
    ex.add_argument("--format", choices=["torchscript", "onnx", "export"], default="onnx")
    ex.add_argument("--out", required=True, help="the file to write")
    ex.add_argument("--device", help="override the scenario's device")

    v = sub.add_parser("validate", help="check a scenario file without running it")
    v.add_argument("scenario")

    from .core.task import TASK_REGISTRIES
    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument("kind", choices=["models", "datasets", "attacks", "defenses",
                                     *TASK_REGISTRIES])

    d = sub.add_parser("dashboard", help="browse scorecards in a local web app (Streamlit)")
    d.add_argument("--runs", default="runs",
                   help="folder holding run folders (default: runs)")
    d.add_argument("--port", type=_port, default=8501, help="port (default 8501)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the dashboard "
                   "has no login, so only widen this on a trusted network)")
    return p


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535 (got {port})")
    return port


def _add_gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", help="baseline file ('arange baseline save') or scorecard "
                   "that max_drop rules compare against")
    p.add_argument("--junit", help="write a JUnit XML report (one test case per rule)")
    p.add_argument("--markdown", help="write a Markdown summary for a pull-request comment")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of regression tests (default 0.05)")
    p.add_argument("--correction", choices=["holm", "none"], default="holm",
                   help="multiple-testing correction over regression checks (default holm)")
    p.add_argument("--allow-failed-checks", action="store_true",
                   help="do not fail the gate when the scorecard's evaluation-validity checks "
                   "failed")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "validate":
            return _cmd_validate(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "dashboard":
            return _cmd_dashboard(args)
        if args.command == "gate":
            return _cmd_gate(args)
        if args.command == "baseline":
            return _cmd_baseline(args)
    except ArangeError as e:
        print(f"arange: error: {_printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arange: interrupted; finished jobs are kept, run the same command to resume",
              file=sys.stderr)
        return 130
    return 2


def _printable(message: str, width: int = 600) -> str:
    """An error for the terminal: control characters escaped (a value from a hostile file must
    not forge lines or terminal sequences) and every line cut to ``width`` characters."""
    lines = []
    for line in message.split("\n"):
        line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
        lines.append(line if len(line) <= width else f"{line[:width]}... (cut)")
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    from .classification.runner import train_defenses
    from .classification.scenario import Scenario
    from .core.scenario import load_scenario, with_trusted_code

    s = with_trusted_code(load_scenario(args.scenario), args.trust_code)
    if not isinstance(s, Scenario):
        raise ArangeError(f"{args.scenario}: 'arange train' builds classification defenses; "
                          f"{s.task} scenarios train their models during 'arange run'")
    try:
        built = train_defenses(s, device=args.device, only=args.defense,
                               progress=not args.quiet)
    except ArangeError as e:
        raise ArangeError(f"{args.scenario}: {e}") from e
    if not built:
        print(f"{args.scenario}: no defense trains a model (trainable: adversarial training "
              "such as pgd_at / fast_at, and denoiser)")
        return 0
    print(f"{'defense':<14} {'method':<10} {'train s':>8} {'test acc':>8}  weights")
    for key, info in built.items():
        acc = info.get("test_accuracy")
        print(f"{key:<14} {info.get('method', ''):<10} {info.get('train_seconds', 0):>8.1f} "
              f"{'' if acc is None else f'{acc:.3f}':>8}  {info.get('path', '')}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .core.driver import resolve_device
    from .core.scenario import load_scenario
    from .forensics.detector import export_detector
    from .forensics.runner import prepare

    s = load_scenario(args.scenario)
    if s.task != "forgery_localization":
        raise ArangeError(f"{args.scenario}: 'arange export' writes forensics detectors; this is "
                          f"a {s.task} scenario")
    label = args.detector or s.target_detector
    spec = next((d for d in s.detectors if d.label == label), None)
    if spec is None or spec.brought:
        raise ArangeError(f"{args.scenario}: no detector {label!r} that the range trains "
                          f"(trained here: {', '.join(d.label for d in s.detectors if not d.brought)})")
    ctx = prepare(s, resolve_device(args.device or s.device), progress=True)
    net = ctx.nets[label]
    spelling = export_detector(net, args.out, args.format, (s.target.crop, s.target.crop))
    print(f"wrote {args.out}; bring it back in a scenario with\n"
          f"detectors:\n  - label: {label}_{args.format}\n    model: {spelling}\n"
          f"    output: logits\n    image_score: topk\n    topk: {getattr(net, 'topk', 0.02)}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .core.scenario import load_scenario
    s = load_scenario(args.scenario)
    print(f"{args.scenario}: ok ({s.task}, {len(s.gates)} gates)")
    if s.task == "classification":
        from .classification.target import describe_target
        for line in describe_target(s):
            print(f"  {line}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .core.task import task_registry
    from .registry import KINDS
    reg = KINDS[args.kind] if args.kind in KINDS else task_registry(args.kind)
    entries = list(reg.entries())
    width = max((len(e.name) for e in entries), default=0)
    for e in entries:
        extra = ""
        kind = getattr(e.obj, "kind", None)
        if args.kind in ("attacks", "inpainters") and isinstance(kind, str):
            extra = f"[{kind}] "
        tasks = getattr(e.obj, "tasks", None) if args.kind == "attacks" else None
        serves = f" (serves: {', '.join(tasks)})" if tasks and tasks != ("classification",) \
            else ""
        print(f"{e.name.ljust(width)}  {extra}{e.description}{serves}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .core.driver import run
    from .core.executors import make_executor
    from .core.scenario import load_scenario, with_trusted_code
    from .core.task import get_task

    s = load_scenario(args.scenario)
    if args.suite_reference:
        s = _with_suite_reference(s, args.scenario)
    s = with_trusted_code(s, args.trust_code)  # before any compute
    out = Path(args.out) if args.out else Path("runs") / s.name
    reference = _check_gate_request(args, s)  # bad rules or baseline fail before any compute
    executor = make_executor(args.executor, args.address)  # a missing Ray fails here
    if args.fresh and (out / "jobs").is_dir():
        shutil.rmtree(out / "jobs")
    task = get_task(s.task)
    card = run(s, out, executor=executor, device=args.device, progress=not args.quiet,
               scenario_path=args.scenario, trust_code=args.trust_code)
    print(task.summary(card))
    print(f"\nscorecard: {out / 'scorecard.json'}")
    failed = [c for c in card.checks if c.status == "fail"]
    status = 0
    if args.strict and failed:
        print(f"arange: {len(failed)} validity check(s) failed (--strict)", file=sys.stderr)
        status = 1
    if args.gate:
        from .gates import load_scorecard_evidence, parse_rules
        current = load_scorecard_evidence(out / "scorecard.json")
        status = max(status, _report_gate(args, current, parse_rules(current.card,
                                                                     current.source), reference))
    return status


def _with_suite_reference(s: Any, path: str) -> Any:
    """``run --suite-reference``: the scenario with evaluation.checks.suite_reference on,
    validated again (a suite entry to check, the reference installed)."""
    from .core.scenario import scenario_from_dict

    if s.task != "classification":
        raise ArangeError(f"{path}: --suite-reference checks a classification scenario's "
                          f"suite against the reference AutoAttack; this is a {s.task} scenario")
    raw = s.model_dump(mode="json")
    raw["evaluation"]["checks"]["suite_reference"]["enabled"] = True
    return scenario_from_dict(raw, path, Path(path).parent)


def _check_gate_request(args: argparse.Namespace, s: object) -> Evidence | None:
    """For ``run --gate``: check the rules and load the baseline; returns the baseline."""
    given = [f"--{k}" for k in ("baseline", "junit", "markdown") if getattr(args, k)]
    if not args.gate:
        if given:
            raise ArangeError(f"{', '.join(given)} only apply with --gate")
        return None
    from .gates import GateError, load_reference, rules_from_list
    raw = [g.model_dump() if hasattr(g, "model_dump") else g for g in getattr(s, "gates", [])]
    rules = rules_from_list(raw, str(getattr(s, "task", "classification")),
                            f"{args.scenario}: gates")
    if not rules:
        raise GateError(f"{args.scenario}: --gate needs a gates: list in the scenario "
                        "(see docs/ci.md)")
    drop = [r for r in rules if r.max_drop is not None]
    if drop and not args.baseline:
        raise GateError(f"{args.scenario}: rule {drop[0].name!r} has max_drop, which needs "
                        "--baseline FILE (record one with 'arange baseline save SCORECARD')")
    if not args.baseline:
        return None
    reference = load_reference(args.baseline)
    name, task = getattr(s, "name", None), getattr(s, "task", "classification")
    if (reference.name, reference.task) != (name, task):
        raise GateError(f"{reference.source}: the baseline is for scenario {reference.name!r} "
                        f"({reference.task}) but {args.scenario} is {name!r} ({task}); give "
                        "the baseline of this scenario")
    return reference


def _report_gate(args: argparse.Namespace, current: Evidence, rules: list[Rule],
                 reference: Evidence | None) -> int:
    from .gates import evaluate, write_outputs
    report = evaluate(current, rules, reference, alpha=args.alpha, correction=args.correction,
                      allow_failed_checks=args.allow_failed_checks)
    print(report.to_text())
    write_outputs(report, args.junit, args.markdown)
    for what, path in (("junit", args.junit), ("markdown", args.markdown)):
        if path:
            print(f"gate {what}: {path}")
    return 0 if report.passed else 1


def _cmd_gate(args: argparse.Namespace) -> int:
    from .gates import load_reference, load_scorecard_evidence, parse_rules
    current = load_scorecard_evidence(args.scorecard)
    rules = parse_rules(current.card, current.source)
    reference = load_reference(args.baseline) if args.baseline else None
    return _report_gate(args, current, rules, reference)


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .baseline import describe, load_baseline, save_baseline
    if args.baseline_command == "save":
        path = save_baseline(args.scorecard, args.out)
        print(f"baseline: {path}")
        return 0
    print(describe(load_baseline(args.baseline)))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import os
    import signal
    import socket
    import subprocess
    import threading

    from .dashboard import RUNS_ENV, streamlit_command

    runs = Path(args.runs).expanduser()
    if runs.exists() and not runs.is_dir():
        raise ArangeError(f"--runs {runs}: not a folder; give the folder that holds the run "
                          "folders (default: runs)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.bind((args.host, args.port))
    except OSError as e:
        raise ArangeError(f"--host {args.host} --port {args.port}: cannot listen there ({e}); "
                          "pick another port with --port") from e
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the dashboard has no login: anyone who can reach %s:%d can read these "
                    "scorecards", args.host, args.port)
    env = dict(os.environ, **{RUNS_ENV: str(runs.resolve())})
    # -P: the working directory stays off sys.path, so the app imports the arange this command
    # belongs to, never a source checkout the user happens to stand in.
    cmd = [sys.executable, "-P", "-m", "streamlit", *streamlit_command(args.host, args.port)]
    log.info("dashboard for %s on http://%s:%d (Ctrl-C stops it)", runs, args.host, args.port)
    proc = subprocess.Popen(cmd, env=env)
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:  # stop the server with us, never orphan it
        stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP")
                                                 else [])
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
