"""The wire format of database access isolation: SQLAlchemy statements and typed values as JSON.

No I/O here - no HTTP, no engines. ``to_wire()`` / ``from_wire()`` carry statement *structure*
(never SQL strings); ``encode_value()`` / ``decode_value()`` carry values with their exact Python
type. See ``docs/wire-format.md``.
"""

from __future__ import annotations

from . import _stable_compile
from .decode import NODE_TYPES, StatementDecoder, StatementInfo, from_wire
from .driver_sql import DRIVER_SQL_KINDS, DriverSQL, driver_sql_document, driver_sql_params
from .encode import WIRE_VERSION, StatementEncoder, to_wire
from .exceptions import (
    TRANSMITTED_BUILTINS,
    MalformedStatementError,
    MalformedValueError,
    MethodArgumentsError,
    MethodDefinitionError,
    MethodResultError,
    MethodTransactionError,
    StatementCodecError,
    TranslationError,
    UnknownColumnError,
    UnknownEnumError,
    UnknownMethodError,
    UnknownNodeError,
    UnknownTableError,
    UnknownValueTagError,
    UnsupportedStatementError,
    UnsupportedValueError,
    ValueCodecError,
    WireVersionError,
)
from .methods import (
    DEFAULT_REGISTRY,
    Method,
    MethodRegistry,
    decode_exception,
    encode_exception,
    register_safe_exception,
    safe_exceptions,
)
from .schemas import validate_document
from .size import DocumentSize, count_values, measure_document
from .type_codec import TypeResolver, encode_type
from .values import (
    WRAPPED_KINDS,
    Wrapped,
    decode_params,
    decode_rows,
    decode_value,
    encode_params,
    encode_result_row,
    encode_row,
    encode_value,
    enum_path,
    enum_resolver_for,
    result_row_encoder,
)

__all__ = [
    "DEFAULT_REGISTRY",
    "DRIVER_SQL_KINDS",
    "DocumentSize",
    "NODE_TYPES",
    "TRANSMITTED_BUILTINS",
    "WIRE_VERSION",
    "WRAPPED_KINDS",
    "MalformedStatementError",
    "MalformedValueError",
    "Method",
    "MethodArgumentsError",
    "MethodDefinitionError",
    "MethodRegistry",
    "MethodResultError",
    "MethodTransactionError",
    "StatementCodecError",
    "StatementDecoder",
    "StatementEncoder",
    "StatementInfo",
    "TranslationError",
    "TypeResolver",
    "UnknownColumnError",
    "UnknownEnumError",
    "UnknownMethodError",
    "UnknownNodeError",
    "UnknownTableError",
    "UnknownValueTagError",
    "UnsupportedStatementError",
    "UnsupportedValueError",
    "DriverSQL",
    "ValueCodecError",
    "WireVersionError",
    "Wrapped",
    "decode_exception",
    "decode_params",
    "driver_sql_document",
    "driver_sql_params",
    "decode_rows",
    "decode_value",
    "encode_exception",
    "encode_params",
    "encode_result_row",
    "encode_row",
    "encode_type",
    "encode_value",
    "enum_path",
    "enum_resolver_for",
    "result_row_encoder",
    "from_wire",
    "register_safe_exception",
    "safe_exceptions",
    "to_wire",
    "validate_document",
    "count_values",
    "measure_document",
]

_stable_compile.install()  # before either side compiles anything (see the module)
