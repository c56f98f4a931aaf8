"""The registry of corpus operations and the ``@op`` decorator."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

ALL = frozenset({"sqlite", "postgresql", "mysql"})


@dataclass(frozen=True)
class Op:
    name: str
    fn: Callable[[Session], Any]
    writes: bool
    backends: frozenset[str] | None
    raises: tuple[type[BaseException], ...]
    # the documented outcome in isolation mode under the default policy: the side under test
    # must raise exactly this and leave its database untouched (e.g. raw SQL text is refused)
    refused: type[BaseException] | None = None

    @property
    def category(self) -> str:
        return self.name.split(".", 1)[0]

    def runs_on(self, backend: str) -> bool:
        return self.backends is None or backend in self.backends


OPS: dict[str, Op] = {}


def op(
    name: str,
    *,
    writes: bool = False,
    backends: Iterable[str] | None = None,
    raises: type[BaseException] | tuple[type[BaseException], ...] = (),
    refused: type[BaseException] | None = None,
) -> Callable[[Callable[[Session], Any]], Callable[[Session], Any]]:
    """Register an operation under ``name`` (must be unique)."""
    if isinstance(raises, type):
        raises = (raises,)
    bset = None if backends is None else frozenset(backends)
    if bset is not None and not bset <= ALL:
        raise ValueError(f"unknown backend in {sorted(bset)}")

    def deco(fn: Callable[[Session], Any]) -> Callable[[Session], Any]:
        if name in OPS:
            raise ValueError(f"duplicate operation name {name!r}")
        OPS[name] = Op(name, fn, writes, bset, tuple(raises), refused)
        return fn

    return deco
