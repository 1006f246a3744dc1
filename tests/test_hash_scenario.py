"""The hash_matching scenario schema: strict, with file: path: message errors (exit status 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from arange.cli import main
from arange.core.scenario import load_scenario, scenario_from_dict
from arange.core.task import task_names
from arange.errors import ScenarioError
from arange.hashing.scenario import HashScenario

ROOT = Path(__file__).resolve().parent.parent
BASE = """name: hb
task: hash_matching
target:
  hash: phash
  thresholds: [10]
  dataset: {name: embedded}
attacks:
  - name: nes
    eps: 32/255
"""

# (file name, edit of BASE, expected message with {file} for the file's path)
BROKEN = [
    ("unknown_hash", ("hash: phash", "hash: phsh"),
     ("{file}: target.hash: unknown hash 'phsh'; did you mean 'phash' or 'whash'? (available: "
     "average_hash, colorhash, dhash, learned, neuralhash, pdq, phash, whash)")),
    ("threshold_range", ("thresholds: [10]", "thresholds: [10, 64]"),
     "{file}: target.thresholds[1]: must be in [0, 63] for phash (64 bits) (got 64)"),
    ("unknown_field", ("  dataset: {name: embedded}", "  dataset: {name: embedded}\n  treshold: 3"),
     ("{file}: target.treshold: unknown field 'treshold'; did you mean 'thresholds'? (allowed: "
     "hash, hash_params, thresholds, dataset, samples, batch_size)")),
    ("whitebox_colorhash", ("hash: phash", "hash: colorhash"),
     ("{file}: attacks[0].name: pgd is white-box and needs a differentiable surrogate, which "
     "colorhash does not have (surrogates: average_hash, dhash, learned, neuralhash, pdq, "
     "phash); use the black-box "
     "attack nes")),
    ("nes_param", ("    eps: 32/255", "    eps: 32/255\n    params: {max_querys: 100}"),
     ("{file}: attacks[0].params.max_querys: attack 'nes' has no parameter 'max_querys'; "
     "did you mean 'max_queries'? (accepted: max_queries, samples, sigma, rel_stepsize, "
     "min_rel_stepsize, momentum, patience, start_radius, resolution, shared_channels, mask, "
     "refine, shrink, chunk)")),
    ("bad_goal", ("    eps: 32/255", "    eps: 32/255\n    goal: second_preimage"),
     ("{file}: attacks[0].goal: input should be 'evasion' or 'collision' (got "
     "'second_preimage')")),
    ("folder_missing", ("  dataset: {name: embedded}",
                        "  dataset: {name: imagefolder, options: {root: no_such_dir}}"),
     ("{file}: target.dataset.options.root: folder {dir}/no_such_dir does not exist; give a path "
     "relative to the scenario file (or an absolute one)")),
    ("hash_size", ("hash: phash", "hash: phash\n  hash_params: {hash_size: 1}"),
     "{file}: target.hash_params.hash_size: must be an integer in [2, 32] (got 1)"),
    ("unknown_task", ("task: hash_matching", "task: hash_matchng"),
     ("{file}: task: unknown task 'hash_matchng'; did you mean 'hash_matching'? (available: "
     "{tasks})")),
    ("gate_metric", ("    eps: 32/255", ("    eps: 32/255\ngates:\n  - {metric: evasion_rat, "
                                        "max: 0.5}")),
     ("{file}: gates[0].metric: unknown metric 'evasion_rat'; did you mean 'evasion_rate' or "
     "'collision_rate'? (available: evasion_rate, collision_rate, clean_detection_rate, "
     "false_positive_rate, corpus_false_positive_rate)")),
    ("transfer_threshold", ("    eps: 32/255", ("    eps: 32/255\nevaluation:\n  transfer: "
                                              "{pdq: 300}")),
     "{file}: evaluation.transfer.pdq: threshold must be an integer in [0, 255] (got 300)"),
    ("duplicate_attack", ("    eps: 32/255", "    eps: 32/255\n  - name: nes\n    eps: 16/255"),
     "{file}: attacks[1]: 'nes' is already used; give this attack a distinct 'label'"),
    ("attack_threshold", ("    eps: 32/255", "    eps: 32/255\n    thresholds: [20]"),
     "{file}: attacks[0].thresholds[0]: not one of target.thresholds (10) (got 20)"),
    ("eps_too_big", ("    eps: 32/255", "    eps: 2"),
     "{file}: attacks[0].eps[0]: must be > 0 and <= 1 for linf (got 2)"),
    ("gate_goal", ("    eps: 32/255", ("    eps: 32/255\ngates:\n  - {metric: collision_rate, "
                                      "attack: nes, max: 0.5}")),
     "{file}: gates[0].metric: attack 'nes' aims at evasion; gate it with evasion_rate"),
    ("gate_no_collision", ("    eps: 32/255", ("    eps: 32/255\ngates:\n  - {metric: "
                                              "collision_rate, max: 0.5}")),
     "{file}: gates[0].metric: no collision attack in this scenario (attacks: nes (evasion))"),
    ("gate_clean_attack", ("    eps: 32/255", ("    eps: 32/255\ngates:\n  - {metric: "
                                              "clean_detection_rate, attack: nes, min: 0.9}")),
     ("{file}: gates[0].attack: clean_detection_rate is measured on unmodified images; remove "
      "attack")),
]


@pytest.mark.parametrize("name,edit,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_hash_scenarios(name: str, edit: tuple[str, str], expected: str,
                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace(*edit)
    if name == "whitebox_colorhash":
        text = text.replace("- name: nes", "- name: pgd")
    assert text != BASE
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    tasks = ", ".join(task_names())  # other tasks register too
    assert err == "arange: error: " + expected.format(file=path, dir=tmp_path,
                                                      tasks=tasks) + "\n"
    assert not out.exists()


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("hash_*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_hash_scenarios_validate(path: Path) -> None:
    s = load_scenario(path)
    assert isinstance(s, HashScenario)
    assert s.task == "hash_matching"
    assert main(["validate", str(path)]) == 0


def test_shipped_scenarios_cover_the_issue() -> None:
    names = {p.stem for p in (ROOT / "scenarios").glob("hash_*.yaml")}
    assert {"hash_evasion_phash", "hash_evasion_pdq", "hash_collision"} <= names
    pdq = load_scenario(ROOT / "scenarios" / "hash_evasion_pdq.yaml")
    assert pdq.target.hash == "pdq" and 31 in pdq.target.thresholds
    coll = load_scenario(ROOT / "scenarios" / "hash_collision.yaml")
    assert all(a.goal == "collision" for a in coll.attacks)


def test_attack_thresholds_select_jobs() -> None:
    from arange.hashing.runner import expand_jobs
    raw = {"name": "sel", "task": "hash_matching",
           "target": {"hash": "phash", "thresholds": [10, 28]},
           "attacks": [{"name": "nes", "eps": "32/255", "thresholds": [10]},
                       {"name": "pgd", "eps": ["4/255", "8/255"]}]}
    jobs = expand_jobs(scenario_from_dict(raw), "fingerprint", 117)
    runs = [(j.threshold, j.attack.key, j.eps) for j in jobs]
    assert runs == [(10, "nes", 32 / 255), (10, "pgd", 4 / 255), (10, "pgd", 8 / 255),
                    (28, "pgd", 4 / 255), (28, "pgd", 8 / 255)]
    assert len({j.key for j in jobs}) == len(jobs) == len({j.job_id for j in jobs})
    again = expand_jobs(scenario_from_dict(raw), "fingerprint", 117)
    assert [j.key for j in again] == [j.key for j in jobs]
    other = expand_jobs(scenario_from_dict(raw), "other data", 117)
    assert not {j.key for j in other} & {j.key for j in jobs}


def test_defaults_and_relative_roots(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    raw = {"name": "x", "task": "hash_matching",
           "target": {"hash": "pdq", "thresholds": 31,
                      "dataset": {"name": "imagefolder", "options": {"root": "imgs"}}},
           "attacks": [{"name": "nes", "eps": "8/255"}]}
    s = scenario_from_dict(raw, source="x.yaml", base_dir=tmp_path)
    assert s.target.thresholds == [31]
    assert s.target.dataset.options["root"] == str((tmp_path / "imgs").resolve())
    assert s.attacks[0].eps == [8 / 255]
    assert s.attacks[0].goal == "evasion" and s.attacks[0].margin == 0
    with pytest.raises(ScenarioError, match=r"x.yaml: \(top level\): missing required field .attacks."):
        scenario_from_dict({k: v for k, v in raw.items() if k != "attacks"}, source="x.yaml",
                           base_dir=tmp_path)
