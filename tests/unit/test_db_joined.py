"""`db.joined`: several writes sent as one statement, their placeholders renumbered."""

from __future__ import annotations

import pytest

from shared.db import Write, joined


def test_writes_become_ctes_numbered_in_turn_before_the_last_statement() -> None:
    cancel = Write("UPDATE timers SET x = $1 WHERE key = ANY($2::text[])", (1, ["a"]))
    arm = Write("INSERT INTO outbox SELECT * FROM unnest($1::int[])", ([7],))
    main = Write(
        "WITH saved AS (UPDATE cases SET v = $2 WHERE id = $1 RETURNING *) SELECT v FROM saved",
        ("c1", 3),
    )
    statement = joined([cancel, arm], main)
    assert statement.sql == (
        "WITH w0 AS (UPDATE timers SET x = $1 WHERE key = ANY($2::text[])), "
        "w1 AS (INSERT INTO outbox SELECT * FROM unnest($3::int[])), "
        "saved AS (UPDATE cases SET v = $5 WHERE id = $4 RETURNING *) SELECT v FROM saved"
    )
    assert statement.args == (1, ["a"], [7], "c1", 3)


def test_writes_alone_and_a_plain_last_statement() -> None:
    first = Write("DELETE FROM a WHERE id = $1", (1,))
    second = Write("DELETE FROM b WHERE id = $1 OR id = $2", (2, 3))
    assert joined([first, second]).sql == (
        "WITH w0 AS (DELETE FROM a WHERE id = $1), "
        "w1 AS (DELETE FROM b WHERE id = $2 OR id = $3) SELECT"
    )
    assert joined([first], Write("SELECT $1::int", (4,))).sql == (
        "WITH w0 AS (DELETE FROM a WHERE id = $1) SELECT $2::int"
    )
    assert joined([], second) == second
    assert joined([first]) == first  # a write alone is sent as it is


def test_two_digit_placeholders_are_renumbered_whole() -> None:
    wide = Write(" ".join(f"${n}" for n in range(1, 12)), tuple(range(11)))
    statement = joined([Write("X $1", (0,)), wide])
    assert statement.sql.endswith("(" + " ".join(f"${n}" for n in range(2, 13)) + ") SELECT")


def test_nothing_to_join_is_an_error() -> None:
    with pytest.raises(ValueError):
        joined([])


@pytest.mark.parametrize(
    ("sql", "args"),
    [("DELETE FROM a WHERE id = $2", (1,)), ("DELETE FROM a WHERE id = $1", (1, 2))],
    ids=["a placeholder past the arguments", "an argument no placeholder takes"],
)
def test_placeholders_must_match_the_arguments(sql: str, args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="placeholders"):
        joined([Write(sql, args)], Write("SELECT 1", ()))
