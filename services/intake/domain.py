"""Intake's rules as pure functions: classify, score severity, flag, route and assign.

Nothing here reads a clock, a database or a broker: every input (history, staff loads, routing
rules, the rule files' contents, `now`) is passed in, so each rule has a table-driven test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache, cached_property, lru_cache
from importlib import resources
from operator import attrgetter

from shared import sla
from shared.events import Category, Channel, Deadlines, Severity, SubmittedData

DEFAULT_TEAM = "customer-care"
FALLBACK_LANGUAGE = "en"

# Weight of an open case in a person's load, against their capacity.
WEIGHT: dict[Severity, int] = {
    Severity.LOW: 1,
    Severity.MEDIUM: 2,
    Severity.HIGH: 3,
    Severity.CRITICAL: 5,
}

# Severity points per category.
CATEGORY_POINTS: dict[Category, int] = {
    Category.STAFF_CONDUCT: 3,
    Category.PRODUCT: 2,
    Category.WARRANTY: 2,
    Category.SERVICE: 2,
    Category.PRICE_QUALITY: 1,
    Category.FACILITIES: 1,
    Category.STOCK: 0,
    Category.ADVERTISING: 1,
    Category.WEBSITE_PHONE: 1,
    Category.OTHER: 0,
}
# Amount at stake that earns +1 and +2, per currency. Other currencies earn no amount points,
# and the severity reasons say that no threshold is configured for them.
AMOUNT_STEPS: dict[str, tuple[Decimal, Decimal]] = {
    "EUR": (Decimal(250), Decimal(1000)),
    "USD": (Decimal(250), Decimal(1000)),
    "GBP": (Decimal(200), Decimal(800)),
    "TRY": (Decimal(8000), Decimal(32000)),
}
SIGNAL_POINTS = {"safety": 4, "legal": 2, "vulnerability": 2}
CHANNEL_POINTS: dict[Channel, int] = {Channel.PHONE: 1, Channel.STORE: 1}
# Score at or above which each severity starts.
SEVERITY_FROM_SCORE: tuple[tuple[int, Severity], ...] = (
    (7, Severity.CRITICAL),
    (4, Severity.HIGH),
    (2, Severity.MEDIUM),
    (0, Severity.LOW),
)
REPEAT_WINDOW_DAYS = 30
FREQUENT_COMPLAINTS = 3  # prior complaints in the window that flag a pattern
HIGH_CLAIMS = 3  # prior claims at or above the first amount step in 90 days
# Remedies far above spend: earlier complaints, within a year, resolved with a remedy worth
# more than REMEDY_OVER_SPEND times what the customer said was at stake (nothing at stake:
# any remedy counts). Two or more make a pattern; one generous gesture does not.
REMEDY_OVER_SPEND = 2
REMEDIES_ABOVE_SPEND = 2
REMEDY_WINDOW_DAYS = 365


# ---------------------------------------------------------------------- rules from data files


@dataclass(frozen=True)
class TermList:
    """Terms of one list in one language, compiled into one word-prefix pattern."""

    terms: tuple[str, ...]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, terms: Iterable[str], language: str) -> TermList:
        folded = tuple(dict.fromkeys(normalise(t, language) for t in terms))
        alternatives = "|".join(re.escape(t) for t in folded)
        # zero-width: every position where some term starts, overlapping ones included
        return cls(folded, re.compile(rf"(?<!\w)(?=(?:{alternatives}))"))

    def found(self, text: str) -> list[str]:
        """The terms that occur in the (normalised) text, each once, in the list's order."""
        hits: set[str] = set()
        for start in (m.start() for m in self.pattern.finditer(text)):
            hits.update(t for t in self.terms if text.startswith(t, start))
        return [t for t in self.terms if t in hits]


@dataclass(frozen=True)
class Rules:
    """Classification and signal word lists, per language."""

    classification: dict[str, list[tuple[Category, TermList]]]
    signals: dict[str, dict[str, TermList]]
    # per language, every signal's terms in one list: a text it finds nothing in has no signal
    any_signal: dict[str, TermList] = field(init=False, repr=False, compare=False)
    # the languages every signal has words in
    every_signal_language: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        terms: dict[str, list[str]] = {}
        for by_language in self.signals.values():
            for language, listed in by_language.items():
                terms.setdefault(language, []).extend(listed.terms)
        union = {language: TermList.of(t, language) for language, t in terms.items()}
        object.__setattr__(self, "any_signal", union)
        tables = [frozenset(by_language) for by_language in self.signals.values()]
        everywhere = frozenset.intersection(*tables) if tables else frozenset()
        object.__setattr__(self, "every_signal_language", everywhere)

    def languages(self) -> list[str]:
        return list(self.classification)


def _load_json(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        resources.files("services.intake.rules").joinpath(name).read_text("utf-8")
    )
    return data


def parse_rules(classification: dict[str, object], signals: dict[str, object]) -> Rules:
    """Rules from the two documents' contents (keys starting with `_` are comments)."""
    by_language: dict[str, list[tuple[Category, TermList]]] = {}
    for language, table in classification.items():
        if language.startswith("_"):
            continue
        assert isinstance(table, dict)
        by_language[language] = [
            (Category(category), TermList.of(terms, language)) for category, terms in table.items()
        ]
    by_signal: dict[str, dict[str, TermList]] = {}
    for signal, table in signals.items():
        if signal.startswith("_"):
            continue
        assert isinstance(table, dict)
        by_signal[signal] = {lang: TermList.of(terms, lang) for lang, terms in table.items()}
    return Rules(by_language, by_signal)


@cache
def default_rules() -> Rules:
    """The rules shipped in `services/intake/rules/` (read once, on first use)."""
    return parse_rules(_load_json("classification.json"), _load_json("signals.json"))


@lru_cache(maxsize=16)  # classify and signals fold the same description
def normalise(text: str, language: str) -> str:
    """Case-folded text with collapsed spaces; Turkish dotted and dotless i kept apart."""
    if language == "tr":
        text = text.replace("I", "ı").replace("İ", "i")
    return " ".join(text.casefold().split())


# ---------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class History:
    """What intake knows of the customer's earlier complaints (all times before `now`)."""

    complaints_30d: int = 0
    complaints_total: int = 0
    high_claims_90d: int = 0
    upheld: int = 0
    not_upheld: int = 0
    mean_satisfaction: float | None = None
    remedies_above_spend_365d: int = 0


@dataclass(frozen=True)
class Flag:
    code: str
    reason: str


@dataclass(frozen=True)
class Classification:
    category: Category
    reason: str


def classify(data: SubmittedData, rules: Rules) -> Classification:
    """The channel's category when given; else the best-scoring rule, with the terms that hit."""
    if data.category is not None:
        return Classification(data.category, "given by the channel")
    language = data.customer.language()
    tried = [language] if language in rules.classification else []
    tried += [lang for lang in rules.languages() if lang not in tried]
    for lang in tried:
        text = normalise(data.description, lang)
        best: tuple[int, Category, list[str]] | None = None
        for category, terms in rules.classification[lang]:
            hits = terms.found(text)
            score = sum(2 if " " in hit else 1 for hit in hits)
            if score and (best is None or score > best[0]):
                best = (score, category, hits)
        if best is not None:
            quoted = ", ".join(f"'{h}'" for h in best[2][:5])
            return Classification(best[1], f"{lang} rules matched {quoted}")
    return Classification(Category.OTHER, "no rule matched in " + ", ".join(tried))


def signals(data: SubmittedData, rules: Rules) -> dict[str, list[str]]:
    """Signal words found in the text (safety, legal, vulnerability, abusive), by signal."""
    language = data.customer.language()
    if language in rules.every_signal_language:
        # each signal is looked for in this language only, and none of its words is there
        text = normalise(data.description, language)
        if rules.any_signal[language].pattern.search(text) is None:
            return {}
    found: dict[str, list[str]] = {}
    quiet: dict[str, bool] = {}  # per language: no signal word in the text at all
    for signal, by_language in rules.signals.items():
        languages = [language] if language in by_language else list(by_language)
        hits = []
        for lang in languages:
            text = normalise(data.description, lang)
            if lang not in quiet:
                quiet[lang] = rules.any_signal[lang].pattern.search(text) is None
            if not quiet[lang]:
                hits += by_language[lang].found(text)
        if hits:
            found[signal] = hits
    return found


def amount_points(data: SubmittedData) -> tuple[int, str | None]:
    """Severity points for the amount at stake, and why."""
    if data.amount_at_stake is None:
        return 0, None
    currency = data.amount_at_stake.currency
    steps = AMOUNT_STEPS.get(currency)
    if steps is None:
        return 0, f"+0 amount at stake: no threshold is configured for {currency}"
    amount = data.amount_at_stake.decimal()
    points = sum(amount >= step for step in steps)
    if not points:
        return 0, None
    step = steps[points - 1]
    return points, f"+{points} amount at stake ≥ {step} {currency}"


@dataclass(frozen=True)
class Scored:
    severity: Severity
    score: int
    reasons: list[str]


def score_severity(
    category: Category, data: SubmittedData, history: History, found: dict[str, list[str]]
) -> Scored:
    """Severity from a points table: category, amount, repeat contact, signal words, channel."""
    points = CATEGORY_POINTS[category]
    reasons = [f"+{points} category {category.value}"]
    extra, why = amount_points(data)
    points += extra
    if why:
        reasons.append(why)
    if history.complaints_30d:
        repeat = min(history.complaints_30d, 2)
        points += repeat
        reasons.append(
            f"+{repeat} repeat contact: "
            f"{history.complaints_30d} earlier in {REPEAT_WINDOW_DAYS} days"
        )
    for signal, weight in SIGNAL_POINTS.items():
        if signal in found:
            points += weight
            reasons.append(f"+{weight} {signal} words: " + ", ".join(found[signal][:3]))
    channel = CHANNEL_POINTS.get(data.channel, 0)
    if channel:
        points += channel
        reasons.append(f"+{channel} channel {data.channel.value}")
    severity = next(level for threshold, level in SEVERITY_FROM_SCORE if points >= threshold)
    reasons.append(f"score {points} → {severity.value}")
    if data.staff_involved and severity in (Severity.LOW, Severity.MEDIUM):
        severity = Severity.HIGH
        reasons.append("raised to high: names staff, both sides must be heard")
    return Scored(severity, points, reasons)


def flags(data: SubmittedData, history: History, found: dict[str, list[str]]) -> list[Flag]:
    """Patterns a senior reviewer should look at; a flag never rejects a complaint."""
    raised = []
    if history.complaints_30d >= FREQUENT_COMPLAINTS:
        raised.append(
            Flag(
                "frequent_complaints",
                f"{history.complaints_30d} earlier complaints in {REPEAT_WINDOW_DAYS} days",
            )
        )
    if history.high_claims_90d >= HIGH_CLAIMS and amount_points(data)[0]:
        raised.append(
            Flag(
                "repeated_high_claims", f"{history.high_claims_90d} earlier high claims in 90 days"
            )
        )
    if history.remedies_above_spend_365d >= REMEDIES_ABOVE_SPEND:
        raised.append(
            Flag(
                "remedies_above_spend",
                f"{history.remedies_above_spend_365d} earlier remedies in {REMEDY_WINDOW_DAYS} "
                f"days worth more than {REMEDY_OVER_SPEND}× what was at stake",
            )
        )
    if "abusive" in found:
        raised.append(Flag("abusive_language", "abusive words in the description"))
    return raised


@dataclass(frozen=True)
class RoutingRule:
    """One row of the routing table; a None field matches anything."""

    rule_id: int
    team: str
    priority: int = 100
    category: str | None = None
    channel: str | None = None
    language: str | None = None
    severity: str | None = None
    tier: str | None = None

    def matches(self, facts: dict[str, str | None]) -> bool:
        return (
            (self.category is None or self.category == facts.get("category"))
            and (self.channel is None or self.channel == facts.get("channel"))
            and (self.language is None or self.language == facts.get("language"))
            and (self.severity is None or self.severity == facts.get("severity"))
            and (self.tier is None or self.tier == facts.get("tier"))
        )

    @property
    def specificity(self) -> int:
        fields = (self.category, self.channel, self.language, self.severity, self.tier)
        return sum(f is not None for f in fields)

    @cached_property
    def precedence(self) -> tuple[int, int, int]:
        """The sort key of the routing table: priority, then most specific, then oldest."""
        return (self.priority, -self.specificity, self.rule_id)


def pick_team(rules: Sequence[RoutingRule], facts: dict[str, str | None]) -> tuple[str, str]:
    """The team of the first matching rule (priority, then most specific), else the default."""
    ordered = sorted(rules, key=attrgetter("precedence"))
    for rule in ordered:
        if rule.matches(facts):
            return rule.team, f"routing rule {rule.rule_id}"
    return DEFAULT_TEAM, "no routing rule matched: default team"


@dataclass(frozen=True)
class StaffLoad:
    """A team member as assignment sees them."""

    staff_id: str
    languages: tuple[str, ...]
    capacity: int
    load: int
    available: bool
    last_assigned_at: datetime | None = None


@dataclass(frozen=True)
class Assignment:
    staff_id: str | None
    reason: str


_NEVER = datetime.min


def _rank(s: StaffLoad) -> tuple[int, datetime, str]:
    """Most spare capacity first, then least recently assigned (wall clock), then by id (the
    first part decides alone unless there is a tie)."""
    last = s.last_assigned_at
    # its wall clock: `last.replace(tzinfo=None)`, which costs four times as much (and every
    # tied member is ranked for every complaint of a batch)
    wall = _NEVER if last is None else datetime.combine(last, last.time())
    return (-(s.capacity - s.load), wall, s.staff_id)


def choose_assignee(
    staff: Sequence[StaffLoad], *, language: str, weight: int, excluded: Iterable[str] = ()
) -> Assignment:
    """The available member with the most spare capacity, speaking the customer's language when
    someone can; ties go to whoever was assigned least recently (round robin)."""
    barred = set(excluded)
    fits = [
        s
        for s in staff
        if s.available and s.staff_id not in barred and s.capacity - s.load >= weight
    ]
    if not fits:
        why = "nobody available with spare capacity" if staff else "the team has no members"
        return Assignment(None, why + ": left in the team queue")
    speakers = [s for s in fits if language in s.languages]
    pool = speakers or fits
    most = max(s.capacity - s.load for s in pool)
    tied = [s for s in pool if s.capacity - s.load == most]
    chosen = tied[0] if len(tied) == 1 else min(tied, key=_rank)
    spare = chosen.capacity - chosen.load
    speaks = f"speaks {language}" if speakers else f"nobody speaks {language}"
    return Assignment(chosen.staff_id, f"most spare capacity ({spare}), {speaks}")


@dataclass(frozen=True)
class Decision:
    """Everything intake decides about one accepted submission."""

    category: Category
    category_reason: str
    severity: Severity
    severity_score: int
    severity_reasons: list[str]
    flags: list[Flag]
    team: str
    team_reason: str
    language: str
    deadlines: Deadlines
    facts: dict[str, str | None] = field(default_factory=dict)

    @property
    def weight(self) -> int:
        return WEIGHT[self.severity]


def decide(
    data: SubmittedData,
    *,
    history: History,
    routing_rules: Sequence[RoutingRule],
    received_at: datetime,
    rules: Rules | None = None,
) -> Decision:
    """Classify, score, flag and pick the team for a submission received at `received_at`."""
    rules = rules or default_rules()
    classification = classify(data, rules)
    found = signals(data, rules)
    scored = score_severity(classification.category, data, history, found)
    language = data.customer.language()
    facts: dict[str, str | None] = {
        "category": classification.category.value,
        "channel": data.channel.value,
        "language": language,
        "severity": scored.severity.value,
        "tier": data.customer.tier,
    }
    team, team_reason = pick_team(routing_rules, facts)
    return Decision(
        category=classification.category,
        category_reason=classification.reason,
        severity=scored.severity,
        severity_score=scored.score,
        severity_reasons=scored.reasons,
        flags=flags(data, history, found),
        team=team,
        team_reason=team_reason,
        language=language,
        deadlines=_deadlines(scored.severity, received_at, received_at.utcoffset()),
        facts=facts,
    )


@lru_cache(maxsize=16)
def _deadlines(severity: Severity, received_at: datetime, _offset: timedelta | None) -> Deadlines:
    """`sla.deadlines`, made once per severity for a batch received at one time (the offset is
    part of the key: an equal time at another offset gives deadlines written otherwise)."""
    return sla.deadlines(severity, received_at)


# The routing table a new installation starts with (category → team).
DEFAULT_ROUTES: tuple[tuple[str, str], ...] = (
    ("product", "product-quality"),
    ("warranty", "product-quality"),
    ("price_quality", "product-quality"),
    ("service", "customer-care"),
    ("staff_conduct", "conduct-review"),
    ("facilities", "store-operations"),
    ("stock", "store-operations"),
    ("advertising", "marketing"),
    ("website_phone", "digital"),
)
