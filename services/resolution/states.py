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

# An opened case's state is about 4 KB (measured with one named person); the text people
# write into a case (statements, a decision's message, a proposal's note) comes on top, up to
# hundreds of KB for a worked case naming many people. The budget counts both.
BUDGET_BYTES = 128 * 1024 * 1024
_BASE_BYTES = 4096
_PER_ENTRY_BYTES = 512  # each named person and each remedy applied before a reopening


def weight(state: CaseState) -> int:
    """Roughly the bytes a kept state holds (its structure, and the text written into it at up
    to four bytes a character)."""
    texts = [h.statement or "" for h in state.staff]
    if state.decision is not None:
        texts.append(state.decision.message)
    if state.pending is not None:
        texts += [state.pending.note, state.pending.message, state.pending.justification or ""]
    entries = len(state.staff) + len(state.previous_remedies)
    return _BASE_BYTES + _PER_ENTRY_BYTES * entries + 4 * sum(len(t) for t in texts)


class States:
    """Case states kept by complaint id within a budget of bytes (`weight`), the least recently
    used dropped first."""

    def __init__(self, budget_bytes: int = BUDGET_BYTES) -> None:
        self._budget = budget_bytes
        self._used = 0
        self._states: OrderedDict[str, tuple[CaseState, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    @property
    def used_bytes(self) -> int:
        return self._used

    def get(self, complaint_id: str) -> CaseState | None:
        kept = self._states.get(complaint_id)
        if kept is None:
            return None
        self._states.move_to_end(complaint_id)
        return kept[0]

    def of(self, complaint_ids: Collection[str]) -> dict[str, CaseState | None]:
        """The states kept of these cases (None where none is)."""
        return {complaint_id: self.get(complaint_id) for complaint_id in complaint_ids}

    def resize(self, budget_bytes: int) -> None:
        """Keep at most `budget_bytes` of states from now on (0: none)."""
        self._budget = budget_bytes
        self._trim()

    def put(self, state: CaseState) -> None:
        """Keep a case's state (a case not opened yet is not kept)."""
        if not state.complaint_id or state.version == 0:
            return
        size = weight(state)
        previous = self._states.pop(state.complaint_id, None)
        if previous is not None:
            self._used -= previous[1]
        self._states[state.complaint_id] = (state, size)
        self._used += size
        self._trim()

    def _trim(self) -> None:
        while self._used > self._budget and self._states:
            _, (_, size) = self._states.popitem(last=False)
            self._used -= size

    def clear(self) -> None:
        self._states.clear()
        self._used = 0


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
