"""`changed(obj, **fields)`: a copy of a frozen dataclass with some fields changed, cheaply.

`dataclasses.replace` reads the class's fields and passes every one through `__init__` on each
call; a case's fold (`services.resolution.case_evolve`) makes a new state once or twice per
event, and that was a tenth of resolution's CPU while clocks fired. Copying the instance's
dict is about five times cheaper, and right for a frozen dataclass whose `__init__` only
stores its fields (no `__post_init__`, no slots): `changed` refuses any other class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_FIELDS: dict[type, frozenset[str]] = {}


def changed(obj: T, /, **changes: Any) -> T:
    """`obj` with `changes` made (as `dataclasses.replace`); an unknown field is a TypeError."""
    cls = type(obj)
    names = _FIELDS.get(cls) or _fields_of(cls)
    if not changes.keys() <= names:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(changes.keys() - names))}")
    new = object.__new__(cls)
    state = new.__dict__
    state.update(obj.__dict__)
    state.update(changes)
    return new


def _fields_of(cls: type) -> frozenset[str]:
    params = getattr(cls, "__dataclass_params__", None)
    if (
        params is None
        or not params.frozen
        or not params.init
        or hasattr(cls, "__post_init__")
        or hasattr(cls, "__slots__")
    ):
        raise TypeError(f"changed() copies frozen dataclasses without __post_init__: {cls!r}")
    names = _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names
