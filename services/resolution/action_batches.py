"""Staff actions over HTTP, kept together: the actions that arrive while one transaction is
being written share the next (group commit, `shared.batcher`).

A batch locks its cases in one statement (in the order of their ids, as every batch does: no
deadlock), finds the answers kept for the Idempotency-Keys it was sent, takes every cap's lock
its money decisions need at once (`repository.lock_totals_many`), decides each action on its
case in the order they came (`cases.staff_decision`; what one decision applied counts against
the caps of the next, `cases.Unwritten`), then writes every decision, reads every answer and
keeps the keyed ones, and commits once. Each action is answered as if it were alone: its
case's view after it, or its refusal. Two actions on one case never share a batch: the second
runs in the next transaction, on the first's outcome. A batch that fails is tried again one
action at a time, so an action that cannot be kept fails alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.resolution import actions, cases, repository, states
from services.resolution.case import Refusal
from shared import directory, telemetry
from shared.batcher import Batcher
from shared.db import Conn, Pool
from shared.events import utcnow
from shared.web import Problem

log = logging.getLogger(__name__)

# An action's answer: its HTTP status and body (a case's view, or a problem document).
Answer = tuple[int, dict[str, Any]]
# PostgreSQL broke a lock cycle, or a snapshot could not be kept: the batch is tried again.
RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
MAX_BATCH = 64
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

    @property
    def digest(self) -> str:
        """What an Idempotency-Key was sent with: the action as parsed (field order and
        spacing of the body do not matter)."""
        return hashlib.sha256(self.action.model_dump_json().encode()).hexdigest()


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
    ) -> None:
        self._pool = pool  # called at a write: the pool exists once the service has started
        self._policies = policies
        self._known = known
        self._view_of = view_of
        self._refused = refused
        self._batcher: Batcher[Request, Answer | Exception] = Batcher(
            self._write, max_batch=MAX_BATCH
        )

    async def act(self, request: Request) -> Answer:
        """Decide and keep `request` with whatever batch it joins; its answer."""
        outcome = await self._batcher.submit(request)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def close(self) -> None:
        await self._batcher.close()

    async def _write(self, requests: Sequence[Request]) -> list[Answer | Exception]:
        """Each request's answer, or the error that kept it from being kept. Never raises: a
        round committed is never tried again."""
        answers: dict[int, Answer | Exception] = {}
        pending = list(enumerate(requests))
        while pending:  # rounds of distinct cases, each in arrival order
            round_, seen, later = [], set(), []
            for n, request in pending:
                if request.complaint_id in seen:
                    later.append((n, request))
                else:
                    seen.add(request.complaint_id)
                    round_.append((n, request))
            answers.update(await self._round(round_))
            pending = later
        return [answers[n] for n in range(len(requests))]

    async def _round(self, numbered: list[tuple[int, Request]]) -> dict[int, Answer | Exception]:
        """One transaction for requests on distinct cases; when it fails, one per request."""
        try:
            answers = await self._retried([request for _, request in numbered])
            return {n: answer for (n, _), answer in zip(numbered, answers, strict=True)}
        except Exception as exc:
            if len(numbered) == 1:
                return {numbered[0][0]: exc}
            log.warning(
                "a batch of %d staff actions failed (%s); each is tried alone",
                len(numbered),
                type(exc).__name__,
            )
        outcomes: dict[int, Answer | Exception] = {}
        for single in numbered:
            outcomes.update(await self._round([single]))
        return outcomes

    async def _retried(self, requests: Sequence[Request]) -> list[Answer]:
        for attempt in range(4):
            try:
                async with self._pool().acquire() as conn, conn.transaction():
                    return await self._decide_and_keep(conn, requests)
            except RETRYABLE:
                if attempt == 3:
                    raise
                await asyncio.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    async def _decide_and_keep(self, conn: Conn, requests: Sequence[Request]) -> list[Answer]:
        now = utcnow()
        loaded = await cases.load_many(conn, [r.complaint_id for r in requests], known=self._known)
        keyed = [_key(r) for r in requests if r.idempotency_key and r.complaint_id in loaded]
        saved = await repository.saved_answers(conn, keyed)
        answers: dict[int, Answer] = {}
        todo: list[int] = []
        for n, request in enumerate(requests):
            if request.complaint_id not in loaded:
                problem = Problem(404, "Not found", f"no complaint {request.complaint_id}")
                answers[n] = (404, problem.document(request.instance))
            elif request.idempotency_key and (earlier := saved.get(_key(request))) is not None:
                answers[n] = _replayed(request, earlier)
            else:
                todo.append(n)
        spending = [requests[n] for n in todo if isinstance(requests[n].action, SPENDING)]
        if spending:
            await repository.lock_totals_many(
                conn,
                customer_ids=[loaded[r.complaint_id].state.customer_id for r in spending],
                staff_ids=[r.member.staff_id for r in spending],
            )
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
        for n, refusal in outcome.items():
            request = requests[n]
            if refusal is not None:
                answers[n] = (refusal.status, self._refused(refusal, request.instance))
            else:
                answers[n] = (200, self._view_of(views[request.complaint_id]))
        await repository.save_answers(
            conn,
            [
                (*_key(requests[n]), requests[n].digest, *answers[n])
                for n in todo
                if requests[n].idempotency_key
            ],
        )
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
