"""The consistency sample a proposal is compared with is counted where the remedies are: its
count and median (as `statistics.median` has it) over the remedies of the same type, currency,
category, severity and band granted within the window, and nothing else."""

from __future__ import annotations

import statistics
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.resolution import repository
from shared import db, migrate
from tests.conftest import shared_schema
from tests.support import remedy_granted

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
async def pool(database: str) -> AsyncIterator[db.Pool]:
    resolution = migrate.for_service("services.resolution.migrations")
    async with shared_schema(database, "samples", resolution) as (_, pool):
        yield pool


async def _grant(
    conn: db.Conn, band: str, amount: Decimal | None, *, at: datetime = NOW, **facts: Any
) -> None:
    await repository.remedies_added([remedy_granted(band, amount, at, **facts)]).run(conn)


async def _sample(conn: db.Conn, band: str) -> tuple[int | None, Decimal | None]:
    applied = await repository.money_applied(
        conn,
        customer_id="nobody",
        customer_since=NOW,
        authorized_by=None,
        staff_since=NOW,
        similar=repository.Similar(
            category="product",
            severity="high",
            band=band,
            type_="refund",
            currency="EUR",
            since=NOW - timedelta(days=90),
        ),
    )
    return applied.similar_count, applied.similar_median


# as the contract's money allows: up to 12 digits before the point and 4 after
amounts = st.lists(
    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("999999999999.9999"), places=4),
    max_size=25,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(amounts=amounts)
async def test_the_sample_is_the_count_and_median_of_the_similar_amounts(
    pool: db.Pool, amounts: list[Decimal]
) -> None:
    band = f"band-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn:
        for amount in amounts:
            await _grant(conn, band, amount)
        count, median = await _sample(conn, band)
    assert count == len(amounts)
    assert median == (statistics.median(amounts) if amounts else None)


@pytest.mark.parametrize("count", [1000, 1001])
async def test_a_large_sample_has_the_median_of_its_amounts(pool: db.Pool, count: int) -> None:
    band = f"band-{uuid.uuid4().hex[:8]}"
    amounts = [Decimal(n * 7919 % 100_003) / 100 for n in range(count)]  # shuffled, distinct
    async with pool.acquire() as conn:
        await repository.remedies_added([remedy_granted(band, a, NOW) for a in amounts]).run(conn)
        assert await _sample(conn, band) == (count, statistics.median(amounts))


async def test_only_similar_remedies_in_the_window_count(pool: db.Pool) -> None:
    band = f"band-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn:
        for amount in ("10", "20", "30"):
            await _grant(conn, band, Decimal(amount))
        await _grant(conn, band, Decimal("999"), type="goodwill_credit")
        await _grant(conn, band, Decimal("999"), currency="GBP")
        await _grant(conn, band, Decimal("999"), category="billing")
        await _grant(conn, band, Decimal("999"), severity="low")
        await _grant(conn, band, None)  # a remedy without an amount is not in a money sample
        await _grant(conn, band, Decimal("999"), at=NOW - timedelta(days=91))
        await _grant(conn, f"{band}-other", Decimal("999"))
        assert await _sample(conn, band) == (3, Decimal("20"))


async def test_without_a_proposal_no_sample_is_taken(pool: db.Pool) -> None:
    async with pool.acquire() as conn:
        applied = await repository.money_applied(
            conn, customer_id="nobody", customer_since=NOW, authorized_by=None, staff_since=NOW
        )
    assert (applied.similar_count, applied.similar_median) == (None, None)
