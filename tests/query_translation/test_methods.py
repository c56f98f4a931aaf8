"""The named-method registry: what may be registered, and what a call and its result carry."""

from __future__ import annotations

import enum
import importlib
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from query_translation import (
    MalformedValueError,
    MethodArgumentsError,
    MethodDefinitionError,
    MethodRegistry,
    MethodResultError,
    UnknownMethodError,
    decode_exception,
    encode_exception,
    encode_value,
    register_safe_exception,
)


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Shade(enum.Enum):
    DARK = 1
    LIGHT = 2


class Lamp(Base):
    __tablename__ = "lamps"
    id: Mapped[int] = mapped_column(primary_key=True)
    shade: Mapped[Shade] = mapped_column(sa.Enum(Shade))


class Other(Base):
    __tablename__ = "others"
    id: Mapped[int] = mapped_column(primary_key=True)


class Opaque:
    pass


@pytest.fixture
def registry() -> MethodRegistry:
    return MethodRegistry()


# -- what may be registered -----------------------------------------------------------------------
def every_type(session: Session, a: str, b: int, c: float, d: bool, e: Decimal, f: datetime, g: date,
               h: time, i: timedelta, j: uuid.UUID, k: bytes, m: Shade, n: int | None,
               o: list[dict[str, tuple[int, ...]]], p: tuple[str, Shade]) -> list[Lamp] | Lamp | None:
    return None


def test_every_codec_type_and_orm_results_can_be_registered(registry: MethodRegistry) -> None:
    method = registry.register(every_type)
    assert registry.get("every_type") is method and method.version == 1
    assert method.describe().endswith("o: list[dict[str, tuple[int, ...]]], p: tuple[str, Shade]) "
                                      "-> list[Lamp] | Lamp | None")


def untyped(session, value):  # type: ignore[no-untyped-def]
    return value


def takes_set(session: Session, values: set[int]) -> None: ...
def takes_any(session: Session, value: Any) -> None: ...
def takes_object(session: Session, value: Opaque) -> None: ...
def takes_bare_list(session: Session, values: list) -> None: ...  # type: ignore[type-arg]
def takes_orm(session: Session, lamp: Lamp) -> None: ...
def returns_object(session: Session) -> Opaque: ...
def returns_untyped(session: Session):  # type: ignore[no-untyped-def]
    ...
def takes_star(session: Session, *names: str) -> None: ...
def takes_positional_only(session: Session, name: str, /) -> None: ...
def no_session() -> None: ...
def dict_int_keys(session: Session, values: dict[int, str]) -> None: ...
def forward(session: Session, value: NotDefinedAnywhere) -> None: ...  # type: ignore[name-defined]  # noqa: F821


@pytest.mark.parametrize(("function", "message"), [
    (untyped, "must annotate the type of parameter 'value'"),
    (takes_set, "parameter 'values' .* is set\\[int\\], which cannot travel"),
    (takes_any, "parameter 'value' .* is Any, which cannot travel"),
    (takes_object, "is Opaque, which cannot travel"),
    (takes_bare_list, "is list, which cannot travel"),
    (takes_orm, "ORM class Lamp, which cannot be an argument; pass its primary key"),
    (returns_object, "return type .* is Opaque, which cannot travel .* or mapped ORM classes"),
    (returns_untyped, "must annotate its return type"),
    (takes_star, "cannot take \\*names"),
    (takes_positional_only, "cannot take 'name' positional-only: arguments travel by name"),
    (no_session, "must take the session as its first parameter"),
    (dict_int_keys, "is dict\\[int, str\\], which cannot travel"),
    (forward, "cannot be resolved .*NotDefinedAnywhere"),
])
def test_a_signature_that_cannot_travel_is_refused_at_registration(
        registry: MethodRegistry, function: Any, message: str) -> None:
    with pytest.raises(MethodDefinitionError, match=message):
        registry.register(function)
    assert function.__name__ not in registry


def first(session: Session) -> int:
    return 1


def session_type_for_checkers_only(session: OnlyImportedWhenTypeChecking, n: int) -> int:  # type: ignore[name-defined]  # noqa: F821
    return n


def test_the_session_annotation_need_not_resolve(registry: MethodRegistry) -> None:
    method = registry.register(session_type_for_checkers_only)
    assert method.describe() == "session_type_for_checkers_only(n: int) -> int"


def test_two_functions_under_one_name_are_refused(registry: MethodRegistry) -> None:
    registry.register(first, name="shared")
    with pytest.raises(MethodDefinitionError, match="Two named methods are called 'shared'.*give one of"):
        registry.register(every_type, name="shared")
    assert registry.get("shared").function is first


@pytest.mark.parametrize(("name", "version", "message"), [
    ("not an identifier", 1, "a name that is a Python identifier"),
    ("ok", 0, "a version that is a positive integer"),
    ("ok", True, "a version that is a positive integer"),
])
def test_names_and_versions_are_checked(registry: MethodRegistry, name: str, version: Any, message: str) -> None:
    with pytest.raises(MethodDefinitionError, match=message):
        registry.register(first, name=name, version=version)


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("qt_methods_")]:
        del sys.modules[name]


def write_module(directory: Path, name: str, body: str) -> None:
    header = "from sqlalchemy.orm import Session\nfrom query_translation import MethodRegistry\n" \
             "REGISTRY = MethodRegistry()\n"
    (directory / f"{name}.py").write_text(header + textwrap.dedent(body))


def test_a_duplicate_fails_when_its_module_is_imported(module_dir: Path) -> None:
    write_module(module_dir, "qt_methods_dup", """
        def a(session: Session) -> int: return 1
        def b(session: Session) -> int: return 2
        REGISTRY.register(a, name="same")
        REGISTRY.register(b, name="same")
    """)
    with pytest.raises(MethodDefinitionError, match="Two named methods are called 'same'"):
        importlib.import_module("qt_methods_dup")


@pytest.mark.parametrize("body", [
    """
        def make():
            def inner(session: Session) -> int: return 1
            return inner
        REGISTRY.register(make(), name="made")
        REGISTRY.register(make(), name="made")
    """,
    """
        def a(session: Session) -> int: return 1
        REGISTRY.register(a)
        def a(session: Session) -> int: return 2
        REGISTRY.register(a)
    """,
], ids=["factory", "redefined"])
def test_one_qualified_name_registered_twice_by_one_import_is_a_duplicate(module_dir: Path, body: str) -> None:
    write_module(module_dir, "qt_methods_same_qualname", body)
    with pytest.raises(MethodDefinitionError, match=r"Two named methods are called '(made|a)': "
                       r"qt_methods_same_qualname\.(make\.<locals>\.inner|a) \(line \d+\) and "):
        importlib.import_module("qt_methods_same_qualname")


def test_the_same_function_registered_again_is_no_duplicate(registry: MethodRegistry) -> None:
    registry.register(first)
    assert registry.register(first, version=2) is registry.get("first", 2)


def test_an_unserializable_signature_fails_when_its_module_is_imported(module_dir: Path) -> None:
    write_module(module_dir, "qt_methods_bad", """
        def a(session: Session, when: frozenset[int]) -> int: return 1
        REGISTRY.register(a)
    """)
    with pytest.raises(MethodDefinitionError, match="parameter 'when'.*frozenset"):
        importlib.import_module("qt_methods_bad")


def test_reimporting_a_module_replaces_its_methods(module_dir: Path) -> None:
    write_module(module_dir, "qt_methods_reload", """
        def a(session: Session) -> int: return 1
        REGISTRY.register(a)
    """)
    module = importlib.import_module("qt_methods_reload")
    registry = module.REGISTRY
    importlib.reload(module)  # a new registry object, as the module's globals are re-executed
    module.REGISTRY = registry
    registry.register(module.a)  # the same function defined again: no duplicate error
    assert registry.get("a").function is module.a


# -- lookups --------------------------------------------------------------------------------------
def test_unknown_names_and_versions_are_named(registry: MethodRegistry) -> None:
    registry.register(first, version=2)
    with pytest.raises(UnknownMethodError, match="'missing' is not registered"):
        registry.get("missing")
    with pytest.raises(UnknownMethodError, match="registered in version 2, but version 1"):
        registry.get("first", 1)
    assert registry.get("first", 2).version == 2
    assert [m.name for m in registry] == ["first"] and len(registry) == 1


# -- arguments and results ------------------------------------------------------------------------
def shine(session: Session, lamp_id: int, shade: Shade, when: datetime | None = None) -> list[Lamp]:
    return []


def test_arguments_round_trip_with_their_types(registry: MethodRegistry) -> None:
    method = registry.register(shine)
    wire = method.encode_arguments((5,), {"shade": Shade.DARK})
    assert wire == {"lamp_id": 5, "shade": encode_value(Shade.DARK)}
    assert method.decode_arguments(wire) == {"lamp_id": 5, "shade": Shade.DARK}


@pytest.mark.parametrize(("args", "message"), [
    ({"lamp_id": True, "shade": encode_value(Shade.DARK)}, "'lamp_id' must be int, got bool"),
    ({"lamp_id": 1, "shade": "DARK"}, "'shade' must be Shade, got str"),
    ({"lamp_id": 1}, "missing a required argument: 'shade'"),
    ({"lamp_id": 1, "shade": encode_value(Shade.DARK), "extra": 1}, "no parameter named extra"),
])
def test_decoded_arguments_must_fit_the_annotations(registry: MethodRegistry, args: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(MethodArgumentsError, match=message):
        registry.register(shine).decode_arguments(args)


def test_encoding_arguments_the_function_does_not_take_is_refused(registry: MethodRegistry) -> None:
    with pytest.raises(MethodArgumentsError, match="shine\\(\\): missing a required argument"):
        registry.register(shine).encode_arguments((), {})


def test_orm_results_carry_column_values_and_only_allowed_classes(registry: MethodRegistry) -> None:
    method = registry.register(shine)
    lamp = Lamp(id=3, shade=Shade.LIGHT)
    sa.orm.make_transient_to_detached(lamp)  # persistent-like: it has an identity
    encoded = method.encode_result([lamp])
    assert encoded == [{"$orm": {"class": f"{__name__}:Lamp",
                                 "values": {"id": 3, "shade": encode_value(Shade.LIGHT)}}}]
    built: list[tuple[type, dict[str, Any]]] = []
    method.decode_result(encoded, lambda cls, values: built.append((cls, values)))
    assert built == [(Lamp, {"id": 3, "shade": Shade.LIGHT})]
    other = Other(id=1)
    sa.orm.make_transient_to_detached(other)
    with pytest.raises(MethodResultError, match="returned a list, not the list\\[Lamp\\]"):
        method.encode_result([other])
    with pytest.raises(MethodResultError, match="not in the database"):
        method.encode_result([Lamp(id=4, shade=Shade.DARK)])
    forged = [{"$orm": {"class": f"{__name__}:Other", "values": {"id": 1}}}]
    with pytest.raises(MalformedValueError, match="does not allow"):
        method.decode_result(forged, lambda cls, values: None)
    unknown_column = [{"$orm": {"class": f"{__name__}:Lamp", "values": {"id": 1, "secret": 2}}}]
    with pytest.raises(MalformedValueError, match="no column attributes \\['secret'\\]"):
        method.decode_result(unknown_column, lambda cls, values: None)


# -- exceptions -----------------------------------------------------------------------------------
@register_safe_exception
class Refused(Exception):
    def __init__(self, what: str, code: int) -> None:
        super().__init__(what, code)


@register_safe_exception
class Keyworded(Exception):
    def __init__(self, *, reason: str) -> None:
        super().__init__(reason)


class NotRegistered(ValueError):
    pass


def test_registered_exceptions_round_trip_with_class_and_arguments() -> None:
    raised = decode_exception(encode_exception(Refused("lamp", 7)))
    assert type(raised) is Refused and raised.args == ("lamp", 7)
    rebuilt = decode_exception(encode_exception(Keyworded(reason="dim")))  # constructor differs
    assert type(rebuilt) is Keyworded and rebuilt.args == ("dim",)
    opaque = decode_exception(encode_exception(ValueError(Opaque())))  # an argument the codec refuses
    assert type(opaque) is ValueError and opaque.args[0].startswith("<")


def test_unregistered_exceptions_are_not_transmitted() -> None:
    assert encode_exception(NotRegistered("subclass of a safe class, not itself registered")) is None
    assert decode_exception({"type": f"{__name__}.NotRegistered", "args": []}) is None
    assert decode_exception({"type": "os.system", "args": ["rm -rf /"]}) is None
    assert decode_exception("garbage") is None


def test_only_exception_classes_can_be_registered() -> None:
    with pytest.raises(TypeError, match="takes an Exception subclass"):
        register_safe_exception(Opaque)  # type: ignore[type-var]
