"""Staff actions and customer replies as they arrive (HTTP bodies, command-topic events), and
the decider's commands they become. Malformed input is refused here with the field named;
whether it may be done is the decider's call."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from services.resolution import case
from services.resolution.policy import Remedy as DomainRemedy
from shared.events import NoNul, Outcome, Remedy

# Every text an action carries is stored: none may hold what PostgreSQL cannot (`NoNul`).
Text = Annotated[str, Field(min_length=1, max_length=5000), NoNul]
Short = Annotated[str, Field(max_length=2000), NoNul]
Reason = Annotated[str, Field(min_length=1, max_length=2000), NoNul]
Long = Annotated[str, Field(min_length=1, max_length=10_000), NoNul]


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # the case version the actor saw (the view's `version`); a stale one gets 409
    version: Annotated[int, Field(ge=0)] | None = None


class AcknowledgeAction(_Action):
    action: Literal["acknowledge"]


class AssignAction(_Action):
    action: Literal["assign"]
    to: Annotated[str, Field(min_length=1, max_length=128), NoNul]


class ClaimAction(_Action):
    action: Literal["claim"]


class RequestInformationAction(_Action):
    action: Literal["request_information"]
    question: Text


class RequestStaffResponseAction(_Action):
    action: Literal["request_staff_response"]


class StaffRespondAction(_Action):
    action: Literal["staff_respond"]
    statement: Long


class ProposeRemedyAction(_Action):
    action: Literal["propose_remedy"]
    remedy: Remedy
    note: Short = ""
    justification: Short | None = None


class WithdrawAction(_Action):
    action: Literal["withdraw"]


class ApproveAction(_Action):
    action: Literal["approve"]
    note: Short = ""


class DeclineAction(_Action):
    action: Literal["decline"]
    reason: Reason


class ResolveAction(_Action):
    action: Literal["resolve"]
    outcome: Outcome
    message: Annotated[str, Field(max_length=10_000), NoNul] = ""


class ReopenAction(_Action):
    action: Literal["reopen"]
    reason: Reason


class CloseAction(_Action):
    action: Literal["close"]


class NoteAction(_Action):
    action: Literal["note"]
    text: Text


Action = Annotated[
    AcknowledgeAction
    | AssignAction
    | ClaimAction
    | RequestInformationAction
    | RequestStaffResponseAction
    | StaffRespondAction
    | ProposeRemedyAction
    | WithdrawAction
    | ApproveAction
    | DeclineAction
    | ResolveAction
    | ReopenAction
    | CloseAction
    | NoteAction,
    Field(discriminator="action"),
]
ACTION = TypeAdapter(Action)


class Reply(BaseModel):
    """The customer's answer to a request for information, or an appeal (`appeal: true`)
    against the decision within the reopen window; sent by the channel that submitted it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: Long
    appeal: bool = False


def command(action: Action) -> case.Command:
    """The decider's command for a well-formed action."""
    match action:
        case AcknowledgeAction():
            return case.Acknowledge()
        case AssignAction(to=to):
            return case.Assign(to)
        case ClaimAction():
            return case.Claim()
        case RequestInformationAction(question=question):
            return case.RequestInformation(question)
        case RequestStaffResponseAction():
            return case.RequestStaffResponse()
        case StaffRespondAction(statement=statement):
            return case.StaffRespond(statement)
        case ProposeRemedyAction():
            return case.ProposeRemedy(remedy(action.remedy), action.note, action.justification)
        case WithdrawAction():
            return case.Withdraw()
        case ApproveAction(note=note):
            return case.Approve(note)
        case DeclineAction(reason=reason):
            return case.Decline(reason)
        case ResolveAction(outcome=outcome, message=message):
            return case.Resolve(outcome, message)
        case ReopenAction(reason=reason):
            return case.Reopen(reason)
        case CloseAction():
            return case.Close()
        case NoteAction(text=text):
            return case.Note(text)
    raise AssertionError(f"unhandled action {action!r}")


def reply_command(reply: Reply) -> case.Command:
    """The decider's command for a customer's reply or appeal."""
    if reply.appeal:
        return case.Reopen(reply.text, by_customer=True)
    return case.CustomerReplied(reply.text)


def remedy(wire: Remedy) -> DomainRemedy:
    """The decider's remedy for a validated wire remedy."""
    return DomainRemedy(wire.type, wire.amount, wire.percent)
