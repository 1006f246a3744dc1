"""Property-based: scenario documents generated from valid ones of every task by deleting,
replacing and inserting fields (values of any JSON type, odd strings included) or by damaging
the YAML text, then validated. The contract: exit status 0 or 2; on 2 only ``arange: error:``
lines that name the file, never a traceback, within a time bound; validate writes nothing."""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arange.cli import main

from .conftest import tiny_scenario
from .test_forensics import TINY as FORENSICS
from .test_hash_runner import TINY as HASH


def _valid() -> list[dict[str, Any]]:
    s = tiny_scenario()
    s["target"]["weights"] = "random"
    return [s, copy.deepcopy(HASH), yaml.safe_load(FORENSICS)]


VALID = _valid()
SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=40) | st.sampled_from(["../../x", "8/255", "1/0", "auto",
                                                     "a" * 300, "\x00", "cuda:99", "-1"]))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                      | st.dictionaries(st.text(max_size=12), c, max_size=4), max_leaves=12)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw: Any) -> str:
    doc = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        op = draw(st.sampled_from(["delete", "replace", "insert"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(VALUES)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(VALUES)
        else:
            parent.insert(0, draw(VALUES))
    text = yaml.safe_dump(doc, allow_unicode=True)
    if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:  # damage the text itself
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\t", ": :", "&a", "*b", "{", "- ", "!!python/object:os.system ''", "\n  x"])) + text[at:]
    return text


RUNS: list[int] = []


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=mutated())
def test_validate_contract_on_mutated_scenarios(text: str, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    before = sorted(tmp_path.rglob("*"))
    err = io.StringIO()
    t0 = time.monotonic()
    with redirect_stderr(err):
        code = main(["validate", str(path)])
    elapsed = time.monotonic() - t0
    RUNS.append(code)
    message = err.getvalue()
    assert code in (0, 2), message
    assert elapsed < 20, (elapsed, text[:300])
    assert "Traceback" not in message
    if code == 2:
        assert message.startswith(f"arange: error: {path}"), message[:500]
        lines = message.strip().splitlines()
        assert all(str(path) in ln for ln in lines), message[:500]
        assert len(message) < 4000
    assert sorted(tmp_path.rglob("*")) == before  # validate writes nothing
