"""The states of the cases a process decided on lately, so that the next decision on one of
them reads and replays only the events after it, not the case's whole log.

A state is used only where the case's log continues it: the first event read after it must
link to its chain head (or, with no event after it, the row's head must be its head). The
chain's hashes cover every event, so an equal head is the same history, and `evolve` being
pure, the same state. A state kept for a decision that was never committed, or that another
process decided differently, fails that test and the case is read whole.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

from services.resolution.case import EMPTY, CaseState, Event, replay
from services.resolution.repository import CaseRead, Decided

# About 4 KB a state (measured: an opened case with its clocks and one named person): 20,000
# are some 90 MB, the cases a busy replica touches within minutes (COMPLAINTS_CASE_STATES).
CAPACITY = 20_000


class States:
    """The last `capacity` case states kept, by complaint id, the least recently used dropped."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._states: OrderedDict[str, CaseState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, complaint_id: str) -> CaseState | None:
        state = self._states.get(complaint_id)
        if state is not None:
            self._states.move_to_end(complaint_id)
        return state

    def known(self, complaint_ids: Collection[str]) -> dict[str, CaseState | None]:
        """The states kept of these cases (None where none is)."""
        return {complaint_id: self.get(complaint_id) for complaint_id in complaint_ids}

    def resize(self, capacity: int) -> None:
        """Keep at most `capacity` states from now on (0: none)."""
        self._capacity = capacity
        self._trim()

    def put(self, state: CaseState) -> None:
        """Keep a case's state (a case not opened yet is not kept)."""
        if not state.complaint_id or state.version == 0:
            return
        self._states[state.complaint_id] = state
        self._states.move_to_end(state.complaint_id)
        self._trim()

    def _trim(self) -> None:
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()


def events_of(decided: Decided) -> list[Event]:
    """Decided events as read (type, data, event_id)."""
    return [Event.from_data(type_, data, event_id) for type_, data, event_id in decided]


def fold(read: CaseRead, base: CaseState | None) -> CaseState | None:
    """The state of the case `read`: its events folded onto `base` (the state known before the
    read, which the read's events continue); None when the read continues a version nobody
    knows here or `base` is not that case's history (read the case whole)."""
    events = events_of(read.events)
    if read.after == 0:
        return replay(events, EMPTY)
    if base is None or base.version != read.after:
        return None
    head = events[0].prev_hash if events else read.row["chain_head"]
    if head != base.chain_head:
        return None
    return replay(events, base)
