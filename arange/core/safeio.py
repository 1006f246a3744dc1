"""Reading files a user (or an attacker) hands to the range: scenarios, scorecards, baselines,
side files. A security tool must not be the way in, so every read is bounded:

* only regular files (not ``/dev/zero``, a FIFO or a folder), read up to a stated size;
* YAML: duplicate keys are an error naming both lines, anchors and aliases may not expand the
  document beyond :data:`MAX_NODES` nodes ("billion laughs"), nesting stops at
  :data:`MAX_DEPTH` levels, and only plain data is built (``yaml.SafeLoader``);
* JSON: the same depth bound, and ``NaN`` / ``Infinity`` are refused;
* error messages quote at most a short prefix of any user value (:func:`short`).

Every failure is an :class:`~arange.errors.ArangeError` subclass chosen by the caller, with the
file name in its message.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import ArangeError

MAX_DEPTH = 64          # nesting levels of a YAML or JSON document
MAX_NODES = 200_000     # YAML nodes after alias expansion
SCENARIO_BYTES = 1 << 20        # 1 MiB: a scenario file
JSON_BYTES = 256 << 20          # 256 MiB: a scorecard, baseline or samples file


def short(value: Any, n: int = 60) -> str:
    """``repr(value)`` cut to ``n`` characters, so an error never echoes a huge value."""
    text = repr(value)
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def read_bytes(path: str | Path, what: str, limit: int,
               error: type[ArangeError] = ArangeError) -> bytes:
    """The content of ``path``, a regular file of at most ``limit`` bytes."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except OSError as e:  # a symlink loop, a permission problem
        raise error(f"{p}: cannot read the {what}: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: is a folder, not a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p}: not a regular file; give a {what} file")
    if st.st_size > limit:
        raise error(f"{p}: {st.st_size} bytes is more than a {what} may hold "
                    f"({limit >> 20} MiB)")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{p}: cannot read the {what}: {e.strerror or e}") from e
    if len(data) > limit:
        raise error(f"{p}: more than a {what} may hold ({limit >> 20} MiB)")
    return data


def read_text(path: str | Path, what: str, limit: int,
              error: type[ArangeError] = ArangeError) -> str:
    data = read_bytes(path, what, limit, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); is this a {what}?") from e


# ---------------------------------------------------------------------------- YAML

class _BoundedLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """SafeLoader that refuses duplicate keys, deep nesting and alias bombs."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels at line "
                                 f"{mark.line + 1}")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            line = key_node.start_mark.line + 1
            if first is not None:
                raise yaml.YAMLError(f"duplicate key {short(key, 40)} at line {line} (first at "
                                     f"line {first}); keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Nodes of the document once aliases are expanded (aliases share node objects)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def load_yaml(text: str, source: str, error: type[ArangeError] = ArangeError) -> Any:
    """Parse ``text`` (from ``source``) with the bounds above; plain data only."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise error(f"{source}: the document expands to more than {MAX_NODES} values "
                        "through anchors and aliases; write it out or use fewer aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{source}: not valid YAML{where}: {short(problem, 200)[1:-1]}") from e
    except RecursionError as e:
        raise error(f"{source}: nested too deeply (at most {MAX_DEPTH} levels)") from e
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------- JSON

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number arange writes")


def _depth(obj: Any) -> int:
    depth, level = 0, [obj]
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return depth
        nxt: list[Any] = []
        for o in level:
            if isinstance(o, dict):
                nxt.extend(o.values())
            elif isinstance(o, list):
                nxt.extend(o)
        level = nxt
    return depth


def load_json(path: str | Path, what: str, limit: int = JSON_BYTES,
              error: type[ArangeError] = ArangeError) -> Any:
    """A JSON file written by arange (a scorecard, baseline, samples or job record)."""
    text = read_text(path, what, limit, error)
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as e:
        raise error(f"{path}: not a {what}: nested too deeply (at most {MAX_DEPTH} levels)"
                    ) from e
    except json.JSONDecodeError as e:
        raise error(f"{path}: the {what} is damaged (not valid JSON at line {e.lineno}, "
                    f"column {e.colno}: {e.msg})") from e
    except ValueError as e:  # NaN / Infinity
        raise error(f"{path}: not a readable {what} JSON file: {short(str(e), 160)[1:-1]}"
                    ) from e
    if _depth(obj) > MAX_DEPTH:
        raise error(f"{path}: not a {what}: nested deeper than {MAX_DEPTH} levels")
    return obj
