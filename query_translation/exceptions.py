"""Errors raised by ``query_translation``.

Every error is a ``ValueError`` subclass, because all of them mean "this input
(a value, a statement, a wire document) cannot be translated"::

    TranslationError(ValueError)            # base of everything query_translation raises
     +-- ValueCodecError
     |    +-- UnsupportedValueError
     |    +-- UnknownValueTagError
     |    +-- MalformedValueError
     |    +-- UnknownEnumError
     +-- MethodDefinitionError          a named method cannot be registered (duplicate name, signature)
     +-- UnknownMethodError             no such named method (or version) in the registry
     +-- MethodArgumentsError           a call's arguments do not fit the method's signature
     +-- MethodResultError              a method's result does not fit its annotation or cannot travel
     +-- StatementCodecError
          +-- UnknownNodeError           (attribute .node_type)
          +-- MalformedStatementError    (attribute .errors: dict, marshmallow-style errors keyed by path)
          +-- UnknownTableError
          +-- UnknownColumnError
          +-- UnsupportedStatementError
          +-- WireVersionError

One error is not about translating anything, and is SQLAlchemy's kind of error instead::

    sqlalchemy.exc.InvalidRequestError
     +-- MethodTransactionError         a named method tried to begin, end or close its caller's transaction

Messages are full sentences that say what to do about the problem.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc

__all__ = [
    "MalformedStatementError",
    "MethodArgumentsError",
    "MethodDefinitionError",
    "MethodResultError",
    "MethodTransactionError",
    "MalformedValueError",
    "StatementCodecError",
    "TranslationError",
    "UnknownColumnError",
    "UnknownEnumError",
    "UnknownMethodError",
    "UnknownNodeError",
    "UnknownTableError",
    "UnknownValueTagError",
    "UnsupportedStatementError",
    "UnsupportedValueError",
    "ValueCodecError",
    "WireVersionError",
    "TRANSMITTED_BUILTINS",
]

# Builtin exceptions an error envelope may name (raised by a bind processor or by the driver
# itself). The server names only these and the client re-creates only these, by name; one list,
# so the two sides cannot disagree about which class a caller sees.
TRANSMITTED_BUILTINS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (TypeError, ValueError, LookupError, KeyError, OverflowError,
                                  ArithmeticError, UnicodeError, AttributeError)
}


class TranslationError(ValueError):
    """Base class of every error raised by query_translation."""


class ValueCodecError(TranslationError):
    """A value could not be encoded to, or decoded from, its JSON wire form."""


class UnsupportedValueError(ValueCodecError):
    """The Python value has a type the wire format cannot carry exactly."""


class UnknownValueTagError(ValueCodecError):
    """A tagged object on the wire uses a ``$tag`` this codec does not know."""


class MalformedValueError(ValueCodecError):
    """A wire value is not valid JSON for the value codec (bad shape or payload)."""


class UnknownEnumError(ValueCodecError):
    """An enum class or member named on the wire is not in the allowlist."""


class StatementCodecError(TranslationError):
    """A statement could not be encoded to, or decoded from, its JSON wire form."""


class UnknownNodeError(StatementCodecError):
    """A statement node type is not supported by the statement codec."""

    def __init__(self, node_type: str, message: str | None = None) -> None:
        self.node_type = node_type
        super().__init__(
            message
            or f"The statement node type {node_type!r} is not supported; rewrite the "
            "query with supported constructs or add a codec for this node type."
        )


class MalformedStatementError(StatementCodecError):
    """A statement wire document failed validation; ``.errors`` says where."""

    def __init__(self, errors: dict[str, Any], message: str | None = None) -> None:
        self.errors = errors
        super().__init__(
            message
            or f"The statement document is malformed: {errors!r}; make sure client "
            "and server run the same query_translation version."
        )


class UnknownTableError(StatementCodecError):
    """A table named on the wire is not in the server's metadata."""


class UnknownColumnError(StatementCodecError):
    """A column named on the wire is not part of its table in the server's metadata."""


class UnsupportedStatementError(StatementCodecError):
    """The statement uses a feature that cannot be sent to the DB-API."""


class WireVersionError(StatementCodecError):
    """The wire document was written by an incompatible codec version."""


class MethodDefinitionError(TranslationError):
    """A named method cannot be registered: its name is taken or its signature cannot travel."""


class UnknownMethodError(TranslationError):
    """The registry has no named method by that name, or not in that version."""


class MethodArgumentsError(TranslationError):
    """The arguments of a named method call do not fit the method's signature."""


class MethodResultError(TranslationError):
    """A named method returned a value its return annotation does not allow, or one that cannot
    travel (an ORM object not in the database, a value of a type the codec does not carry)."""


class MethodTransactionError(sa_exc.InvalidRequestError):
    """A named method called ``commit()``, ``rollback()``, ``begin()`` or ``close()`` on its session
    (or on the session's connection): a method runs inside its caller's transaction and must not
    end it. Raised the same way in direct and in isolation mode."""
