"""Bound values as the server's driver must get them: processed once, on the client, then adapted.

A direct connection runs SQLAlchemy's bind processors in the execution context's
``_init_compiled``, on the expanded parameters, and its driver adapts each value while the
statement executes. Isolated, both happen on the client, where the application's classes live,
and the wire carries what the driver in effect binds:

* :func:`processed_parameters`, called from the client context's ``_init_compiled``, applies the
  server dialect's real processors (the client compiler's own ``_bind_processors`` stay empty, so
  SQLAlchemy's construction of ``context.parameters`` runs none and nothing runs twice) to the
  *unexpanded* values - an expanding ``IN`` list elementwise, a tuple ``IN`` per element type, as
  ``SQLCompiler._process_parameters_for_postcompile`` assigns them. A failing processor or
  ``TypeDecorator`` therefore raises the ``StatementError`` a direct session raises, from the
  same call.
* :func:`driver_parameters`, called from ``do_execute`` (where a driver adapts), applies the
  driver replica (:mod:`dbsession._adapt`); a value the driver refuses raises the driver's
  exception class from there.

``literal_execute`` binds are rendered into the SQL by the server's compiler with the type's
literal processor, from the Python value: they stay unprocessed and travel with the strict value
codec. The server expands ``IN`` lists itself (so it renders the same SQL), from these values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.sql import compiler as sql_compiler

from . import _dbapi
from ._adapt import DriverAdapter, Unbindable

__all__ = ["adapted_parameters", "dbapi_parameters", "driver_parameters", "driver_sql_parameters",
           "processed_parameters", "wire_parameters"]

_real_processors = sql_compiler.SQLCompiler._bind_processors.fget


class _Expanding:
    """An expanding bind: its rows are flattened into scalars (tuple IN) or its items are values."""

    __slots__ = ("is_tuple", "is_null")

    def __init__(self, bind: Any, dialect: Any) -> None:
        impl = bind.type._unwrapped_dialect_impl(dialect)
        self.is_tuple = bool(impl._is_tuple_type)
        self.is_null = bool(impl._isnull)

    def flattens(self, values: Sequence[Any]) -> bool:
        """``_literal_execute_expanding_parameter``'s choice: one bound value per tuple element."""
        return self.is_tuple or (self.is_null and bool(values) and isinstance(values[0], Sequence)
                                 and not isinstance(values[0], (str, bytes)))


class _BindPlan:
    """What one compiled statement needs to process and adapt its parameters (cached on it)."""

    def __init__(self, compiled: Any) -> None:
        dialect = compiled.dialect
        self.processors: Mapping[str, Any] = _real_processors(compiled)
        names = compiled.bind_names
        # as _process_parameters_for_postcompile tells them apart: rendered literally (a bind the
        # compiler rendered so, or a literal_execute expanding one), or expanded into binds
        literal = set(compiled.literal_execute_params)
        literal.update(b for b in compiled.post_compile_params if b.literal_execute)
        self.literal = frozenset(names[b] for b in literal)
        self.expanding = {names[b]: _Expanding(b, dialect) for b in compiled.post_compile_params
                          if b not in literal}
        self.postcompiled = bool(self.literal or self.expanding)
        self.positiontup: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.order = tuple(dict.fromkeys(self.positiontup))
        self._in_order = frozenset(self.order)
        self.escaped = compiled.escaped_bind_names

    def ordered(self, params: Mapping[str, Any]) -> Iterable[str]:
        """The parameters' names in the order the driver sees them (SQL order when positional)."""
        if not self.order:
            return params
        return [*(n for n in self.order if n in params), *(n for n in params if n not in self._in_order)]

    def position(self, params: Mapping[str, Any], name: str, element: int = 0) -> int:
        """1-based position of *name* (its *element*-th expanded value) in the driver's tuple."""
        position = 0
        for candidate in self.positiontup:
            if candidate == name:
                return position + element + 1
            if candidate in self.literal:
                continue  # rendered into the SQL
            info = self.expanding.get(candidate)
            if info is None:
                position += 1
            else:
                values = params[candidate]
                position += sum(len(row) for row in values) if info.flattens(values) else len(values)
        return element + 1


def _plan(compiled: Any) -> _BindPlan:
    plan: _BindPlan | None = compiled.__dict__.get("_dbs_bind_plan")
    if plan is None:
        plan = compiled._dbs_bind_plan = _BindPlan(compiled)
    return plan


# -- processing (in _init_compiled) -----------------------------------------------------------------
def processed_parameters(context: Any, compiled: Any, parameters: Any, extracted_parameters: Any,
                         collected: Any) -> list[dict[str, Any]]:
    """``context.compiled_parameters`` unexpanded, through the server dialect's bind processors."""
    plan = _plan(compiled)
    if plan.postcompiled:  # SQLAlchemy expanded compiled_parameters[0] in place; undo that
        param_sets = [_unexpanded(context, compiled, plan, parameters, extracted_parameters, collected)]
    else:
        param_sets = context.compiled_parameters
    if not plan.processors:
        return list(param_sets)
    return [_process(params, plan) for params in param_sets]


def _unexpanded(context: Any, compiled: Any, plan: _BindPlan, parameters: Any, extracted_parameters: Any,
                collected: Any) -> dict[str, Any]:
    extra = {"_collected_params": collected} if collected is not None else {}
    fresh = compiled.construct_params(parameters[0] if parameters else None, escape_names=False,
                                      _group_number=0 if parameters else None,
                                      extracted_parameters=extracted_parameters, **extra)
    params = dict(context.compiled_parameters[0])  # prefetched defaults included
    for keys in getattr(context, "_expanded_parameters", {}).values():
        for key in keys:
            params.pop(key, None)
    for name in (*plan.expanding, *plan.literal):
        if name in fresh:
            params[name] = fresh[name]
    return params


def _process(params: Mapping[str, Any], plan: _BindPlan) -> dict[str, Any]:
    processors = plan.processors
    out: dict[str, Any] = {}
    for name in plan.ordered(params):
        value = params[name]
        process = processors.get(name)
        if process is None:
            out[name] = value
        elif name in plan.expanding:
            out[name] = _process_expanding(value, process, plan.expanding[name])
        else:
            out[name] = process(value)
    return out


def _process_expanding(values: Any, process: Any, info: _Expanding) -> list[Any]:
    if not info.is_tuple:
        return [process(value) for value in values]
    # the flattened elements get the element types' processors in turn (idx % len), row by row
    count, index, rows = len(process), 0, []
    for row in values:
        items = []
        for item in row:
            element_process = process[index % count]
            index += 1
            items.append(element_process(item) if element_process is not None else item)
        rows.append(tuple(items))
    return rows


def dbapi_parameters(context: Any, processed: Sequence[Mapping[str, Any]]) -> list[Any]:
    """``context.parameters`` as a direct connection builds them: expanded, processed.

    What ``before_cursor_execute`` listeners see (and what a rewritten statement sends as driver
    SQL); the client's own construction of them ran no processor.
    """
    compiled = context.compiled
    plan = _plan(compiled)
    expanded: Mapping[str, Sequence[str]] = getattr(context, "_expanded_parameters", None) or {}
    sequence = context.dialect.execute_sequence_format
    if not expanded and not plan.literal:  # the usual case: the names as compiled
        if compiled.positional:
            return [sequence([params[key] for key in plan.positiontup]) for params in processed]
        return [{plan.escaped.get(k, k): v for k, v in params.items()} if plan.escaped else dict(params)
                for params in processed]
    positional = None
    if compiled.positional:
        positional = [key for name in plan.positiontup if name not in plan.literal
                      for key in (expanded[name] if name in expanded else (name,))]
    out: list[Any] = []
    for params in processed:
        flat = {name: value for name, value in params.items() if name not in plan.literal}
        for name, keys in expanded.items():
            values = flat.pop(name)
            items = ([item for row in values for item in row] if plan.expanding[name].flattens(values)
                     else list(values))
            flat.update(zip(keys, items))
        if positional is not None:
            out.append(sequence([flat[key] for key in positional]))
        else:
            out.append({plan.escaped.get(k, k): v for k, v in flat.items()} if plan.escaped else flat)
    return out


# -- adapting (in do_execute) -----------------------------------------------------------------------
def driver_parameters(context: Any, adapter: DriverAdapter) -> list[dict[str, Any]]:
    """The processed parameters as the server's driver must bind them (see module docstring)."""
    return adapted_parameters(context.compiled, context._dbs_params, adapter)


def wire_parameters(compiled: Any, param_sets: Sequence[Mapping[str, Any]],
                    adapter: DriverAdapter) -> list[dict[str, Any]]:
    """Unexpanded Python-level *param_sets* (``construct_params()``), processed and adapted.

    What an execution sends, for callers that build requests without executing (tests).
    """
    plan = _plan(compiled)
    processed = [_process(p, plan) for p in param_sets] if plan.processors else list(param_sets)
    return adapted_parameters(compiled, processed, adapter)


def adapted_parameters(compiled: Any, param_sets: Sequence[Mapping[str, Any]],
                       adapter: DriverAdapter) -> list[dict[str, Any]]:
    """Processed *param_sets* through the driver replica; literal_execute values as they are."""
    plan = _plan(compiled)
    adapt = adapter.adapt
    out = []
    for params in param_sets:
        sent: dict[str, Any] = {}
        for name in plan.ordered(params):
            value = params[name]
            try:
                if name in plan.literal:
                    sent[name] = value
                elif name in plan.expanding:
                    sent[name] = _adapt_expanding(value, plan.expanding[name], adapt)
                else:
                    sent[name] = adapt(value)
            except _Refused as refused:
                raise _binding_error(plan.position(params, name, refused.element), refused.type_name) from None
            except Unbindable as exc:
                raise _binding_error(plan.position(params, name), exc.type_name) from None
        out.append(sent)
    return out


class _Refused(Exception):
    def __init__(self, element: int, type_name: str) -> None:
        self.element, self.type_name = element, type_name


def _adapt_expanding(values: Any, info: _Expanding, adapt: Callable[[Any], Any]) -> list[Any]:
    flat = 0
    try:
        if info.flattens(values):
            rows = []
            for row in values:
                items = []
                for item in row:
                    items.append(adapt(item))
                    flat += 1
                rows.append(tuple(items))
            return rows
        out = []
        for value in values:
            out.append(adapt(value))
            flat += 1
        return out
    except Unbindable as exc:
        raise _Refused(flat, exc.type_name) from None


def driver_sql_parameters(parameter_sets: Sequence[Any], adapter: DriverAdapter) -> list[Any]:
    """``exec_driver_sql`` parameters (and rewritten SQL's) as the server's driver must bind them."""
    adapt = adapter.adapt
    out: list[Any] = []
    for param_set in parameter_sets:
        items = list(param_set.items()) if isinstance(param_set, Mapping) else list(enumerate(param_set))
        adapted = []
        for position, (key, value) in enumerate(items, 1):
            try:
                adapted.append((key, adapt(value)))
            except Unbindable as exc:
                raise _binding_error(position, exc.type_name) from None
        out.append(dict(adapted) if isinstance(param_set, Mapping) else tuple(v for _, v in adapted))
    return out


def _binding_error(position: int, type_name: str) -> _dbapi.ProgrammingError:
    return _dbapi.ProgrammingError(f"Error binding parameter {position}: type '{type_name}' is not supported")
