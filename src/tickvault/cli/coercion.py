"""Command-line values converted without pydantic when the result is certain to be the same.

typer (0.29) converts every non-flag parameter with a pydantic ``TypeAdapter``, built the
first time the parameter is processed, even when its value is absent. Importing pydantic
and building the adapters costs ~0.05-0.1 s per command start, a third of a ``tickvault
status``. :func:`install_plain_coercion` gives the parameters of a command a converter that
handles the plain cases itself, with exactly typer's result:

* ``bool`` (flags such as ``--help``, which typer converts when absent): a bool unchanged;
* ``str``: a string that is valid UTF-8 (no lone surrogates) is returned unchanged;
* ``int`` without bounds: an integer, or a canonical decimal text of up to 18 digits;
* ``Path`` without a ``path_type``: a non-empty string without NUL becomes ``Path(value)``
  and then goes through typer's own path checks (``exists``, ``readable``...).

Anything else (and every other annotation) goes to typer's own converter, built on first
need, so error messages and odd inputs are typer's. ``tests/test_cli_coercion.py`` compares
both on a set of values. Hand-written because typer has no switch for this; it uses typer's
``_coercion`` module and leaves a parameter alone when that module or the attributes it
relies on are not there (another typer version), so the worst case is the old speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
    from typer._param_types import coerce_cli_path
except ImportError:  # a typer without this layer: nothing to speed up
    RuntimeParam = None  # type: ignore[assignment,misc]

_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]{0,17}")


def _plain_text(value: Any) -> bool:
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from undecodable argv bytes
        return False
    return True


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):
        """typer's conversion of ``bool``, ``str``, ``int`` and ``Path``, plain cases first."""

        descriptor: TypeDescriptor

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            annotation = self.annotation
            if annotation is bool and type(value) is bool:
                return value
            if annotation is str and _plain_text(value):
                return value
            if annotation is int:
                if type(value) is int:
                    return value
                if type(value) is str and _CANONICAL_INT.fullmatch(value):
                    return int(value)
            if annotation is Path and _plain_text(value) and value and "\0" not in value:
                info = self.parameter_info
                return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
            return self._typer_param()._coerce_value(value, param=param, ctx=ctx)

        def _typer_param(self) -> Any:
            cached = self.__dict__.get("_typer")
            if cached is None:
                cached = build_runtime_param(self.descriptor)
                object.__setattr__(self, "_typer", cached)
            return cached


def _plain(descriptor: Any) -> bool:
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or info.parser is not None:
        return False
    if descriptor.annotation in (str, bool):
        return True
    if descriptor.annotation is int:
        return info.min is None and info.max is None and not info.clamp
    return descriptor.annotation is Path and info.path_type is None


def install_plain_coercion(params: list[Any]) -> None:
    """Give each parameter in ``params`` that typer would convert with pydantic, and whose
    annotation is ``bool``, ``str``, ``int`` or ``Path`` without extra conversion options,
    the plain converter; idempotent, and a no-op for parameters of an unknown shape (and for
    ``None`` entries)."""
    if RuntimeParam is None:
        return
    for param in params:
        if param is None:
            continue
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", "absent") is not None:
            continue
        if _plain(descriptor):
            param._runtime_param = PlainRuntimeParam(
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                descriptor=descriptor,
            )
