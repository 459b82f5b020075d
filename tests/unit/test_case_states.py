"""The case states a resolution replica keeps: the least recently used go first, a case not
opened is never kept, and a smaller capacity drops the oldest at once."""

from __future__ import annotations

from dataclasses import replace

from services.resolution.case import EMPTY
from services.resolution.states import States


def _state(complaint_id: str, version: int = 2):
    return replace(EMPTY, complaint_id=complaint_id, version=version)


def test_the_least_recently_used_state_goes_first() -> None:
    states = States(capacity=2)
    states.put(_state("a"))
    states.put(_state("b"))
    assert states.get("a") is not None  # "a" is now the most recently used
    states.put(_state("c"))
    assert states.get("b") is None
    assert states.known(["a", "c", "x"]) == {"a": _state("a"), "c": _state("c"), "x": None}


def test_a_newer_state_replaces_the_older_one() -> None:
    states = States(capacity=2)
    states.put(_state("a", 2))
    states.put(_state("a", 5))
    assert len(states) == 1 and states.get("a") == _state("a", 5)


def test_a_case_not_opened_is_not_kept() -> None:
    states = States()
    states.put(EMPTY)
    states.put(_state("a", 0))
    assert len(states) == 0


def test_resizing_drops_the_oldest_at_once() -> None:
    states = States(capacity=3)
    for name in "abc":
        states.put(_state(name))
    states.resize(1)
    assert states.known("abc") == {"a": None, "b": None, "c": _state("c")}
    states.resize(0)
    states.put(_state("d"))
    assert len(states) == 0
