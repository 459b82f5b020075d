"""Staff actions over HTTP, kept together: the actions that arrive while one transaction is being
written share the next (group commit, `shared.batcher`).

A batch locks its cases in one statement, never waiting (`SKIP LOCKED`), finds the answers kept
for the Idempotency-Keys it was sent, takes every cap's lock its money decisions need at once,
never waiting either (`repository.try_lock_totals_many`), decides each action on its case in
the order they came (`cases.staff_decision`; what one decision applied counts against the caps
of the next, `cases.Unwritten`), then writes every decision, reads every answer and keeps the
keyed ones, and commits once. Each action is answered as if it were alone: its case's view
after it, or its refusal.

Nothing in a batch waits for a lock: an action whose case, or whose caps, another transaction
holds (a decision of another replica, a consumer batch, a clock firing) leaves the batch and
waits for them in a transaction of its own, as every action did before batches, so one busy
case holds up no other action and no lock cycle can form with transactions that lock cases in
another order. Such waits are bounded: at most `alone_limit` at once (each holds a connection
of the pool, which must keep some for everything else) and `LOCK_WAIT_S` each (then 503: the
database is busy, try again). Two actions on one case never share a batch: a replica's actions
on one case take turns, in the order they were let in (after the token check and the rate
limit: two sent within a millisecond of each other may swap), each joining a batch once the one
before it is kept (were two to meet in one all the same, the log's key on each case's version
would fail the batch, and each would be tried alone). A batch that fails for its content is
tried one action at a time, so only the action that cannot be kept fails; one that fails
because the database went away is not (its commit may have happened): each action fails, and a
retry with its Idempotency-Key is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import asyncpg

from services.resolution import actions, cases, repository, states
from services.resolution.case import Refusal
from shared import db, directory, kafka, telemetry
from shared.batcher import Batcher
from shared.db import Conn, Pool
from shared.events import utcnow
from shared.web import Problem

log = logging.getLogger(__name__)

# An action's answer: its HTTP status and body (a case's view, or a problem document).
Answer = tuple[int, dict[str, Any]]
MAX_BATCH = 64
T = TypeVar("T")
# The actions whose decisions read (and may spend under) the caps: `cases.context`.
SPENDING = (actions.ProposeRemedyAction, actions.ApproveAction)


@dataclass(frozen=True)
class Request:
    """A staff member's action on a case, checked for form and credentials already; its
    answer's problem documents name `instance`, and its events continue `trace`."""

    complaint_id: str
    action: actions.Action
    member: directory.Member
    instance: str
    idempotency_key: str | None = None
    trace: dict[str, str] = field(default_factory=telemetry.inject_headers)

    @cached_property
    def digest(self) -> str:
        """What an Idempotency-Key was sent with: the action as parsed (field order and
        spacing of the body do not matter)."""
        return hashlib.sha256(self.action.model_dump_json().encode()).hexdigest()


class _Held:
    """The outcome of an action whose case another transaction holds: wait for it alone."""


HELD = _Held()
# How long an action waits alone for its case or its caps before it is answered 503.
LOCK_WAIT_S = 10
Outcome = Answer | Exception | _Held


class _Turns:
    """One turn at a time per case, in the order asked for (`asyncio.Lock` is fair); a case
    nobody waits for holds no lock."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, complaint_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(complaint_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[complaint_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[complaint_id]
            if users == 1:
                del self._locks[complaint_id]
            else:
                self._locks[complaint_id] = (lock, users - 1)


class StaffActions:
    """Staff actions decided and kept in batches; `view_of` renders a case's view for staff,
    `refused` a refusal as its problem document."""

    def __init__(
        self,
        pool: Callable[[], Pool],
        *,
        policies: cases.PolicySource,
        known: states.States,
        view_of: Callable[[dict[str, Any]], dict[str, Any]],
        refused: Callable[[Refusal, str], dict[str, Any]],
        alone_limit: int = 4,
    ) -> None:
        self._pool = pool  # called at a write: the pool exists once the service has started
        self._policies = policies
        self._known = known
        self._view_of = view_of
        self._refused = refused
        self._batcher: Batcher[Request, Outcome] = Batcher(self._batch, max_batch=MAX_BATCH)
        self._turns = _Turns()
        self._alone_slots = asyncio.Semaphore(alone_limit)

    async def act(self, request: Request) -> Answer:
        """Decide and keep `request` with whatever batch it joins (alone when its case is
        busy), after this replica's actions on its case that came before it; its answer."""
        async with self._turns.of(request.complaint_id):
            outcome = await self._batcher.submit(request)
            if isinstance(outcome, _Held):
                async with self._alone_slots:  # before taking a connection
                    return await self._retried(lambda conn: self._alone(conn, request))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def close(self) -> None:
        await self._batcher.close()

    async def _batch(self, requests: Sequence[Request]) -> list[Outcome]:
        """One transaction for requests on distinct cases (their turns: see `act`); when it
        fails for its content, one per request. Never raises: a batch committed is never
        tried again."""
        try:
            return list(await self._retried(lambda conn: self._together(conn, requests)))
        except Exception as exc:
            if len(requests) == 1 or kafka.is_transient(exc):
                return [exc] * len(requests)
            log.warning(
                "a batch of %d staff actions failed (%s); each is tried alone",
                len(requests),
                type(exc).__name__,
            )
        outcomes: list[Outcome] = []
        for request in requests:
            outcomes += await self._batch([request])
        return outcomes

    async def _retried(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`work` in a transaction, run again when PostgreSQL broke a lock cycle."""
        return await db.retried_transaction(self._pool(), work)

    async def _together(self, conn: Conn, requests: Sequence[Request]) -> list[Outcome]:
        """Requests on distinct cases decided and kept in `conn`'s transaction; HELD for those
        whose case another transaction holds."""
        loaded, held = await cases.try_load_many(
            conn, [r.complaint_id for r in requests], known=self._known
        )
        ready = [r for r in requests if r.complaint_id not in held]
        answers = iter(await self._decide_and_keep(conn, ready, loaded, wait=False))
        return [HELD if r.complaint_id in held else next(answers) for r in requests]

    async def _alone(self, conn: Conn, request: Request) -> Answer:
        """One request decided and kept in `conn`'s transaction, waiting for its case and its
        caps (`LOCK_WAIT_S` at most)."""
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_S}s'")
        found = await cases.load(conn, request.complaint_id, known=self._known)
        loaded = {request.complaint_id: found} if found is not None else {}
        [answer] = await self._decide_and_keep(conn, [request], loaded, wait=True)
        assert not isinstance(answer, _Held)  # it waited
        return answer

    async def _decide_and_keep(
        self,
        conn: Conn,
        requests: Sequence[Request],
        loaded: Mapping[str, cases.Loaded],
        *,
        wait: bool,
    ) -> list[Answer | _Held]:
        """Requests on distinct cases, those `loaded` locked by this transaction (the others
        do not exist), decided and kept; their answers. Without `wait`, HELD for a money
        action whose caps another transaction holds (nothing of it decided)."""
        keyed = [_key(r) for r in requests if r.idempotency_key and r.complaint_id in loaded]
        saved = await repository.saved_answers(conn, keyed)
        answers: dict[int, Answer | _Held] = {}
        todo: list[int] = []
        for n, request in enumerate(requests):
            if request.complaint_id not in loaded:
                problem = Problem(404, "Not found", f"no complaint {request.complaint_id}")
                answers[n] = (404, problem.document(request.instance))
            elif request.idempotency_key and (earlier := saved.get(_key(request))) is not None:
                answers[n] = _replayed(request, earlier)
            else:
                todo.append(n)
        spending = [n for n in todo if isinstance(requests[n].action, SPENDING)]
        customer = {n: loaded[requests[n].complaint_id].state.customer_id for n in spending}
        staff = {n: requests[n].member.staff_id for n in spending}
        if spending and wait:
            await repository.lock_totals_many(
                conn, customer_ids=customer.values(), staff_ids=staff.values()
            )
        elif spending:
            busy_customers, busy_staff = await repository.try_lock_totals_many(
                conn, customer_ids=customer.values(), staff_ids=staff.values()
            )
            for n in spending:
                if customer[n] in busy_customers or staff[n] in busy_staff:
                    answers[n] = HELD
            todo = [n for n in todo if n not in answers]
        now = utcnow()  # once the cases and caps are locked: after what decided on them before
        seen: dict[Any, Any] = {}
        unwritten = cases.Unwritten()
        decided: list[cases.Decision] = []
        outcome: dict[int, Refusal | None] = {}
        for n in todo:
            request = requests[n]
            result = await cases.staff_decision(
                conn,
                loaded[request.complaint_id].state,
                request.action,
                request.member,
                policies=self._policies,
                now=now,
                seen=seen,
                unwritten=unwritten,
                trace=request.trace,
            )
            if isinstance(result, cases.Decision):
                decided.append(result)
                unwritten.add(result)
                outcome[n] = None
            else:
                outcome[n] = result
            # pure work between two decisions: let the process's other tasks run
            await asyncio.sleep(0)
        viewed = {requests[n].complaint_id for n, refusal in outcome.items() if refusal is None}
        views = await cases.keep_many(conn, decided, known=self._known, views=viewed)
        kept: list[tuple[str, str, str, str, int, Any]] = []  # the keyed answers
        for n, refusal in outcome.items():
            request = requests[n]
            if refusal is not None:
                answer = (refusal.status, self._refused(refusal, request.instance))
            else:
                answer = (200, self._view_of(views[request.complaint_id]))
            answers[n] = answer
            if request.idempotency_key:
                kept.append((*_key(request), request.digest, *answer))
        await repository.save_answers(conn, kept)
        return [answers[n] for n in range(len(requests))]


def _key(request: Request) -> tuple[str, str, str]:
    assert request.idempotency_key is not None
    return request.complaint_id, request.member.staff_id, request.idempotency_key


def _replayed(request: Request, earlier: asyncpg.Record) -> Answer:
    """The answer kept for an earlier action with the request's Idempotency-Key, or 422 when
    that key was used for another action."""
    if earlier["request_sha256"] != request.digest:
        problem = Problem(
            422, "Invalid request", "this Idempotency-Key was used for another action"
        )
        return 422, problem.document(request.instance)
    return int(earlier["status"]), earlier["body"]
