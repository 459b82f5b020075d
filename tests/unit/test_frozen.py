"""`changed`: a frozen dataclass copied with some fields changed, as `dataclasses.replace`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from services.resolution.case import EMPTY, Status
from shared.frozen import changed


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = field(default=())


def test_changed_is_replace() -> None:
    p = Point(1, 2, ("a",))
    assert changed(p, y=5) == dataclasses.replace(p, y=5) == Point(1, 5, ("a",))
    assert p == Point(1, 2, ("a",))  # the original is untouched
    assert hash(changed(p, x=3)) == hash(Point(3, 2, ("a",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed(p, x=3).x = 4  # type: ignore[misc]
    state = changed(EMPTY, version=3, status=Status.ROUTED)
    assert state == dataclasses.replace(EMPTY, version=3, status=Status.ROUTED)


def test_an_unknown_field_is_refused() -> None:
    with pytest.raises(TypeError, match="has no field z"):
        changed(Point(1), z=2)


def test_only_plain_frozen_dataclasses_are_copied() -> None:
    @dataclass
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("negative")

    for obj in (Mutable(1), Checked(1), object()):
        with pytest.raises(TypeError, match="frozen dataclasses"):
            changed(obj, x=2)


def test_a_dataclass_without_a_generated_init_is_refused() -> None:
    @dataclass(frozen=True, init=False)
    class Derived:
        x: int

        def __init__(self, x: int) -> None:
            object.__setattr__(self, "x", abs(x))

    with pytest.raises(TypeError, match="frozen dataclasses"):
        changed(Derived(-1), x=-2)
