"""The case states a resolution replica keeps: within a budget of bytes, the least recently
used go first, a case not opened is never kept, and a smaller budget drops the oldest at once."""

from __future__ import annotations

from dataclasses import replace

from services.resolution.case import EMPTY
from services.resolution.case_model import Hearing
from services.resolution.states import States, weight


def _state(complaint_id: str, version: int = 2, statement: str | None = None):
    staff = (Hearing("s1", statement=statement),) if statement is not None else ()
    return replace(EMPTY, complaint_id=complaint_id, version=version, staff=staff)


ONE = weight(_state("a"))


def test_the_least_recently_used_state_goes_first() -> None:
    states = States(budget_bytes=2 * ONE)
    states.put(_state("a"))
    states.put(_state("b"))
    assert states.get("a") is not None  # "a" is now the most recently used
    states.put(_state("c"))
    assert states.get("b") is None
    assert states.of(["a", "c", "x"]) == {"a": _state("a"), "c": _state("c"), "x": None}
    assert states.used_bytes == 2 * ONE


def test_a_newer_state_replaces_the_older_one() -> None:
    states = States(budget_bytes=2 * ONE)
    states.put(_state("a", 2))
    states.put(_state("a", 5))
    assert len(states) == 1 and states.get("a") == _state("a", 5)
    assert states.used_bytes == ONE


def test_text_written_into_a_case_counts_against_the_budget() -> None:
    heavy = _state("h", statement="x" * 10_000)
    assert weight(heavy) >= ONE + 40_000
    states = States(budget_bytes=weight(heavy) + ONE)
    states.put(_state("a"))
    states.put(_state("b"))
    states.put(heavy)  # room for it and one more: the oldest goes
    assert states.of(["a", "b", "h"]) == {"a": None, "b": _state("b"), "h": heavy}


def test_a_case_not_opened_is_not_kept() -> None:
    states = States()
    states.put(EMPTY)
    states.put(_state("a", 0))
    assert len(states) == 0 and states.used_bytes == 0


def test_resizing_drops_the_oldest_at_once() -> None:
    states = States(budget_bytes=3 * ONE)
    for name in "abc":
        states.put(_state(name))
    states.resize(ONE)
    assert states.of("abc") == {"a": None, "b": None, "c": _state("c")}
    states.resize(0)
    states.put(_state("d"))
    assert len(states) == 0 and states.used_bytes == 0
