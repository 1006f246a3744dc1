"""Executors: the Ray executor gives the local executor's scorecard; chains keep dependent jobs
in order; a missing Ray is one clear message; ``batch_size: auto`` backs off on out-of-memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import arange
from arange.classification.runner import chain_groups, expand_jobs
from arange.cli import main
from arange.core.executors import RAY_MISSING, make_executor
from arange.core.scenario import scenario_from_dict
from arange.speed import BatchSize

from .conftest import tiny_scenario
from .test_resume import comparable, local_reference, small_cascade


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_ray_executor_matches_local(tmp_path: Path,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """A local Ray runtime (2 workers, one job each at a time) gives the local scorecard."""
    pytest.importorskip("ray")
    spec = small_cascade()
    local, local_out = local_reference(tmp_path_factory)
    path = _write(tmp_path, spec)
    out = tmp_path / "ray"
    assert main(["run", str(path), "--out", str(out), "--executor", "ray", "-q"]) == 0
    card = json.loads((out / "scorecard.json").read_text())
    assert comparable(card) == comparable(local)
    # the driver wrote every job record and its examples, as a local run does
    for folder, pattern in (("jobs", "*.json"), ("examples", "*.npz")):
        names = sorted(p.name for p in (out / folder).glob(pattern))
        assert names and names == sorted(p.name for p in (local_out / folder).glob(pattern))
    for p in (out / "jobs").glob("*.json"):
        ours, theirs = json.loads(p.read_text()), json.loads((local_out / "jobs" / p.name)
                                                              .read_text())
        assert {k: v for k, v in ours.items() if k != "seconds"} == \
            {k: v for k, v in theirs.items() if k != "seconds"}
    import ray
    assert not ray.is_initialized()  # the runtime arange started is shut down again


def test_missing_ray_is_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    path = _write(tmp_path, small_cascade())
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"arange: error: {RAY_MISSING}"
    assert 'pip install "arange[ray]"' in err
    assert not out.exists()  # failed before any compute or write


def test_address_needs_ray_executor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, small_cascade())
    assert main(["run", str(path), "--address", "auto"]) == 2
    assert "--address only applies with --executor ray" in capsys.readouterr().err
    with pytest.raises(arange.ArangeError, match="unknown executor"):
        make_executor("spark")


def _jobs(**overrides: Any) -> list[Any]:
    s = scenario_from_dict(tiny_scenario(**overrides))
    return expand_jobs(s, "w" * 64, "d" * 64)


def test_chains_keep_dependent_jobs_together_and_in_order() -> None:
    independent = _jobs()
    chains = chain_groups(independent, cascade=False)
    assert [len(c) for c in chains] == [1] * len(independent)

    cascade = _jobs(evaluation={"cascade": True})
    chains = chain_groups(cascade, cascade=True)
    assert len(chains) == 2  # one per eps cell, each fgsm then pgd
    for c in chains:
        assert [j.attack.key for j in c] == ["fgsm", "pgd"]
        assert len({j.eps for j in c}) == 1
    assert sorted(j.key for c in chains for j in c) == sorted(j.key for j in cascade)

    suite = _jobs(attacks=[{"suite": "standard", "eps": ["4/255", "8/255"]},
                           {"name": "fgsm", "eps": ["4/255"]}])
    chains = chain_groups(suite, cascade=False)
    sizes = sorted(len(c) for c in chains)
    assert sizes[0] == 1 and sizes[-1] > 1  # fgsm alone; each suite x eps one ordered chain
    for c in chains:
        if len(c) > 1:
            order = [j for j in suite if j.suite is not None and j.eps == c[0].eps]
            assert c == order


def test_batch_size_auto_in_the_schema() -> None:
    target = dict(tiny_scenario()["target"], batch_size="auto")
    s = scenario_from_dict(tiny_scenario(target=target))
    assert s.target.batch_size == "auto"
    cpu = BatchSize.resolve("auto", torch.device("cpu"))
    assert cpu.auto and cpu.size == 128
    assert BatchSize.resolve(32, torch.device("cpu")) == BatchSize(32)
    with pytest.raises(arange.ScenarioError, match=r"target\.batch_size: must be a whole number"):
        scenario_from_dict(tiny_scenario(target=dict(target, batch_size="big")), source="s.yaml")


def test_auto_batch_size_halves_on_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that fits 16 images: an auto batch of 64 halves twice and the job's outcome equals
    a run at 16 from the start (each retried batch restarts from its generator state)."""
    from arange.attacks.pgd import PGD
    from arange.classification.runner import Defended, build_defenses, prepare_target, run_job

    spec = tiny_scenario(attacks=[{"name": "pgd", "eps": ["8/255"], "params": {"steps": 1}}])
    s = scenario_from_dict(spec)
    dev = torch.device("cpu")
    target = prepare_target(s, dev, progress=False)
    defended: Defended = build_defenses(s, target, dev, progress=False)["none"]
    job = expand_jobs(s, target.weights_sha256, target.data.fingerprint())[0]
    mask = torch.ones(len(target.data), dtype=torch.bool)
    clean = torch.zeros(len(target.data), dtype=torch.long)
    real_run = PGD.run
    sizes: list[int] = []

    def small_device(self: Any, model: Any, x: torch.Tensor, *args: Any) -> Any:
        sizes.append(x.shape[0])
        if x.shape[0] > 16:
            torch.rand(3, generator=args[-1])  # work done before the device ran out
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(self, model, x, *args)

    monkeypatch.setattr(PGD, "run", small_device)
    auto = BatchSize(64, auto=True)
    rec = run_job(job, defended, target.data, mask, clean, s, dev, batch=auto)
    assert auto.size == 16 and sizes[:3] == [64, 32, 16]
    fixed = run_job(job, defended, target.data, mask, clean, s, dev, batch=BatchSize(16))
    assert rec["robust"] == fixed["robust"] and rec["adv_pred"] == fixed["adv_pred"]
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a fixed size never shrinks silently
        run_job(job, defended, target.data, mask, clean, s, dev, batch=BatchSize(64))


def test_worker_refuses_a_target_that_differs_from_the_drivers() -> None:
    """A Ray worker rebuilds the models itself; if its weights, data or clean predictions are not
    the driver's, it must refuse to run jobs (results from another model must never mix in)."""
    from arange.core.executors import _Worker
    from arange.core.task import get_task

    s = scenario_from_dict(small_cascade())
    task = get_task("classification")
    good = task.identity(task.prepare(s, torch.device("cpu"), progress=False))
    assert _Worker("classification", s, "cpu", good, 0).ready()
    clean = good["clean_pred"]["none"]
    bad = [
        (dict(good, weights_sha256="0" * 64), "weights differ"),
        (dict(good, data_fingerprint="0" * 64), "evaluation data differ"),
        (dict(good, clean_pred={"none": [(c + 1) % 10 for c in clean]}),
         "predicts differently"),
    ]
    for identity, message in bad:
        with pytest.raises(arange.ArangeError, match=message):
            _Worker("classification", s, "cpu", identity, 0).ready()


@pytest.mark.parametrize("task", ["hash_matching", "forgery_localization"])
def test_ray_executor_serves_every_task(task: str, tmp_path: Path) -> None:
    """The hash and forensics ranges on a local Ray runtime give the local scorecard and the
    same evidence files (the driver writes what the workers send back)."""
    pytest.importorskip("ray")
    from .test_forensics import TINY as FORENSICS
    from .test_hash_runner import TINY as HASH
    from .test_resume import _scrub

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(HASH) if task == "hash_matching" else FORENSICS)
    cards = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        assert main(["run", str(path), "--out", str(out), "-q", "--executor", executor]) == 0
        cards[executor] = json.loads((out / "scorecard.json").read_text())
        assert cards[executor]["task"] == task
    assert _scrub(cards["ray"]) == _scrub(cards["local"])
    for folder in ("images", "examples", "jobs"):
        names = [sorted(p.relative_to(tmp_path / e) for p in (tmp_path / e / folder).rglob("*")
                        if p.is_file()) for e in ("local", "ray")]
        assert names[0] == names[1]
