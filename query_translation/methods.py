"""Named methods: the registry both sides share, and what a call carries on the wire.

A named method is a function ``f(session, **arguments) -> result`` registered under a name and a
version. The client (``dbsession.methods``) sends ``{"version", "args"}``; the server looks the
method up here, runs it and answers ``{"result"}``. The registry is the single source of truth:
the server serves exactly what is registered, and a definition that could not travel - a name
taken twice, a parameter or result type the value codec cannot carry - fails when its module is
imported, not at the first call.

Everything here is pure: the type annotations (``typing.get_type_hints``) decide what a call may
carry, and the same annotations are the allowlist for decoding (enum classes, ORM classes), so
nothing named on the wire is ever imported. No I/O: running a method is the caller's business.
"""

from __future__ import annotations

import enum
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc

from . import _method_types as types
from ._method_guard import transaction_kept
from ._method_types import ResultCodec, check_argument, conforms
from .exceptions import (
    TRANSMITTED_BUILTINS,
    MethodArgumentsError,
    MethodDefinitionError,
    MethodResultError,
    MethodTransactionError,
    UnknownMethodError,
    ValueCodecError,
)
from .values import JSONable, decode_value, encode_value, enum_resolver_for

__all__ = [
    "DEFAULT_REGISTRY",
    "Method",
    "MethodRegistry",
    "decode_exception",
    "encode_exception",
    "register_safe_exception",
    "safe_exceptions",
]


ExceptionT = TypeVar("ExceptionT", bound=type[Exception])


@dataclass(frozen=True, eq=False)
class Method:
    """One registered named method: its function, and what its signature allows on the wire."""

    name: str
    version: int
    function: Callable[..., Any]
    signature: inspect.Signature
    parameters: Mapping[str, Any]  # name -> resolved type hint (the session parameter excluded)
    returns: Any
    enums: tuple[type[enum.Enum], ...] = field(repr=False)
    result_codec: ResultCodec = field(repr=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.function.__module__}.{self.function.__qualname__}"

    def describe(self) -> str:
        """``name(arg: type, ...) -> type`` for listings (the session parameter left out)."""
        params = []
        for param in list(self.signature.parameters.values())[1:]:
            default = "" if param.default is param.empty else f" = {param.default!r}"
            params.append(f"{param.name}: {types.type_name(self.parameters[param.name])}{default}")
        return f"{self.name}({', '.join(params)}) -> {types.type_name(self.returns)}"

    # -- arguments --------------------------------------------------------------------------
    def encode_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, JSONable]:
        """The call's arguments (session excluded) by parameter name, in the value codec.

        Raises ``MethodArgumentsError`` when they do not bind to the signature, are not of the
        annotated types, or cannot travel - in both modes (see ``call_arguments``).
        """
        try:
            bound = self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise MethodArgumentsError(f"{self.name}(): {exc}.") from None
        names = iter(bound.arguments)
        next(names)  # the session
        encoded: dict[str, JSONable] = {}
        for name in names:
            value = bound.arguments[name]
            check_argument(self.name, name, value, self.parameters[name])
            try:
                encoded[name] = encode_value(value)
            except ValueCodecError as exc:
                raise MethodArgumentsError(f"{self.name}(): argument {name!r} cannot travel: {exc}") from None
        return encoded

    def decode_arguments(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments from a call document, checked against the annotations."""
        unknown = sorted(set(data) - set(self.parameters))
        if unknown:
            raise MethodArgumentsError(f"{self.name}() has no parameter named {', '.join(unknown)}.")
        resolver = enum_resolver_for(self.enums)
        try:
            kwargs = {name: decode_value(value, enum_resolver=resolver) for name, value in data.items()}
        except ValueCodecError as exc:
            raise MethodArgumentsError(f"{self.name}(): an argument cannot be decoded: {exc}") from None
        for name, value in kwargs.items():
            check_argument(self.name, name, value, self.parameters[name])
        try:
            self.signature.bind(None, **kwargs)
        except TypeError as exc:
            raise MethodArgumentsError(f"{self.name}(): {exc}.") from None
        return kwargs

    def call_arguments(self, args: tuple[Any, ...],
                       kwargs: Mapping[str, Any]) -> tuple[dict[str, JSONable], dict[str, Any]]:
        """``(wire, arguments)``: what a call sends, and what the function receives on the server.

        Both modes take both: isolation mode sends *wire*, direct mode calls the function with
        *arguments* - the values after the round trip, so the function sees what it would see on
        the server (copies, not the caller's objects) and a call refused in one mode is refused
        in the other, with the same ``MethodArgumentsError``.
        """
        wire = self.encode_arguments(args, kwargs)
        return wire, self.decode_arguments(wire)

    # -- running ----------------------------------------------------------------------------
    def invoke(self, session: Any, arguments: Mapping[str, Any]) -> Any:
        """Run the function with *session*, as both modes do; the caller holds the savepoint.

        The session (and its connection) refuse to begin, end or close the transaction while the
        function runs (``MethodTransactionError``); afterwards the session is flushed, as the
        savepoint's release would, so returned objects have their identity for ``check_result``.
        """
        with transaction_kept(session, self.name):
            result = self.function(session, **arguments)
        session.flush()
        return result

    # -- result -----------------------------------------------------------------------------
    def check_result(self, value: Any) -> None:
        """Raise ``MethodResultError`` where ``encode_result`` would (direct mode), without SQL."""
        self._result(value, load=False)

    def encode_result(self, value: Any) -> JSONable:
        return self._result(value, load=True)

    def _result(self, value: Any, *, load: bool) -> JSONable:
        if not conforms(value, self.returns):
            raise MethodResultError(
                f"{self.name}() returned a {type(value).__name__}, not the "
                f"{types.type_name(self.returns)} its annotation promises.")
        try:
            return self.result_codec.encode(value, load=load)
        except ValueCodecError as exc:
            raise MethodResultError(f"{self.name}() returned a value that cannot travel: {exc}") from None

    def decode_result(self, data: Any, build: Callable[[type, dict[str, Any]], Any]) -> Any:
        """The result; ORM instances are made by *build(cls, column values)*."""
        return self.result_codec.decode(data, build)


class MethodRegistry:
    """Named methods by name. Thread-safe; looked up at each call, so late imports count."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        self._origins: dict[str, object] = {}  # name -> the module execution that registered it
        self._lock = threading.Lock()

    def register(self, function: Callable[..., Any], *, name: str | None = None, version: int = 1) -> Method:
        """Register *function*; raises ``MethodDefinitionError`` if it cannot be served.

        A name is taken once. The one exception is a module executed again (``importlib.reload``):
        its functions replace the ones its previous execution registered. Two functions of one
        execution under one name - a name defined twice in a module, or a factory's nested
        function made twice - are duplicates even though their qualified names are equal.
        """
        method = _define(function, name or function.__name__, version)
        origin = _origin(function)
        with self._lock:
            existing = self._methods.get(method.name)
            if existing is not None and existing.function is not function and (
                    existing.qualified_name != method.qualified_name
                    or self._origins[method.name] is origin):
                raise MethodDefinitionError(
                    f"Two named methods are called {method.name!r}: {_where(existing.function)} and "
                    f"{_where(function)}; give one of them another name=.")
            self._methods[method.name] = method
            self._origins[method.name] = origin
        return method

    def unregister(self, name: str) -> None:
        with self._lock:
            self._methods.pop(name, None)
            self._origins.pop(name, None)

    def get(self, name: str, version: int | None = None) -> Method:
        """The method *name*; with *version*, only if it is that version."""
        method = self._methods.get(name)
        if method is None:
            raise UnknownMethodError(
                f"The named method {name!r} is not registered here; import the module that "
                "defines it (the DB-API: DBAPI_METHODS / create_app(methods=...)).")
        if version is not None and version != method.version:
            raise UnknownMethodError(
                f"The named method {name!r} is registered in version {method.version}, but version "
                f"{version} was asked for; run the same version of the method's module on both sides.")
        return method

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(sorted(self._methods.values(), key=lambda m: m.name))

    def __len__(self) -> int:
        return len(self._methods)


#: The process-wide registry ``@server_method`` registers into and the DB-API serves by default.
DEFAULT_REGISTRY = MethodRegistry()


def _origin(function: Callable[..., Any]) -> object:
    """What tells one execution of the function's module from another: its ``__spec__``, a new
    object each time the import system (re)loads the module; None outside of it (``__main__``)."""
    return getattr(function, "__globals__", {}).get("__spec__")


def _where(function: Callable[..., Any]) -> str:
    code = getattr(function, "__code__", None)
    line = f" (line {code.co_firstlineno})" if code is not None else ""
    return f"{function.__module__}.{function.__qualname__}{line}"


def _define(function: Callable[..., Any], name: str, version: int) -> Method:
    where = f"named method {name!r} ({function.__module__}.{function.__qualname__})"
    if not name.isidentifier():
        raise MethodDefinitionError(f"The {where} needs a name that is a Python identifier.")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MethodDefinitionError(f"The {where} needs a version that is a positive integer.")
    signature = inspect.signature(function)
    params = list(signature.parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise MethodDefinitionError(f"The {where} must take the session as its first parameter.")
    hints = types.resolve_hints(function, where, session=params[0].name)
    parameters: dict[str, Any] = {}
    for param in params[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise MethodDefinitionError(f"The {where} cannot take *{param.name}: name every parameter.")
        if param.kind == param.POSITIONAL_ONLY:
            raise MethodDefinitionError(f"The {where} cannot take {param.name!r} positional-only: arguments "
                                        "travel by name (drop the '/' after it).")
        if param.name not in hints:
            raise MethodDefinitionError(f"The {where} must annotate the type of parameter {param.name!r}.")
        types.check_type(hints[param.name], f"parameter {param.name!r} of the {where}", orm=False)
        parameters[param.name] = hints[param.name]
    if "return" not in hints:
        raise MethodDefinitionError(f"The {where} must annotate its return type (-> None if none).")
    returns = hints["return"]
    types.check_type(returns, f"the return type of the {where}", orm=True)
    enums = tuple(types.enums_in([*parameters.values(), returns]))
    return Method(name, version, function, signature, parameters, returns, enums,
                  ResultCodec(returns, enums))


# -- exceptions a method may raise to its caller -------------------------------------------------
# Re-raised on the client with the same class and arguments; any other exception reaches the
# caller as a generic error carrying the server's error id, so nothing the method did not mean
# to say (a stack, a message built from secrets) leaves the server. Registered by exact class.
_safe_lock = threading.Lock()
_SAFE: dict[str, type[BaseException]] = {}


def _path(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_safe_exception(cls: ExceptionT) -> ExceptionT:
    """Allow named methods to raise *cls* to their callers (usable as a class decorator).

    The class must be importable on both sides under the same name: register it in the module
    that defines the methods, which client and server both import.
    """
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise TypeError(f"register_safe_exception() takes an Exception subclass, got {cls!r}.")
    with _safe_lock:
        _SAFE[_path(cls)] = cls
    return cls


def safe_exceptions() -> frozenset[type[BaseException]]:
    return frozenset(_SAFE.values())


def encode_exception(exc: BaseException) -> dict[str, JSONable] | None:
    """``{"type", "args"}`` for a registered exception class, None for any other."""
    cls = type(exc)
    if _SAFE.get(_path(cls)) is not cls:
        return None
    try:
        args: list[JSONable] = [encode_value(arg) for arg in exc.args]
    except ValueCodecError:
        args = [str(exc)]  # arguments the codec cannot carry travel as the message
    return {"type": _path(cls), "args": args}


def decode_exception(data: Any) -> BaseException | None:
    """The exception an ``encode_exception`` document describes; None if its class is unknown."""
    if type(data) is not dict or type(data.get("args")) is not list:
        return None
    cls = _SAFE.get(str(data.get("type")))
    if cls is None:
        return None
    try:
        args = [decode_value(arg) for arg in data["args"]]
    except ValueCodecError:
        args = [str(arg) for arg in data["args"]]
    try:
        return cls(*args)
    except Exception:  # a constructor with another signature: rebuild the instance as pickle does
        exc = cls.__new__(cls)
        exc.args = tuple(args)
        return exc


# the three method errors both modes raise for the same mistakes: their messages name only
# methods, parameters and types
for _cls in (*TRANSMITTED_BUILTINS.values(), IndexError, PermissionError, NotImplementedError,
             sa_exc.NoResultFound, sa_exc.MultipleResultsFound, MethodArgumentsError,
             MethodResultError, MethodTransactionError):
    register_safe_exception(_cls)
