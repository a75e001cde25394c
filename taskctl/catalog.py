"""The job catalog: short names for the functions in ``jobs/``, and their contracts.

Users and applications name jobs (``send_email``), never import paths. The
catalog turns a name into a function, and checks arguments against the
function's signature and annotations *before* anything reaches Redis, so a bad
call fails in the caller's hands and not hours later on a worker.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from taskctl.declare import JobSpec, spec_of
from taskctl.exceptions import CatalogError, InvalidArgumentsError, UnknownJobError

_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


@dataclass(frozen=True)
class CatalogEntry:
    spec: JobSpec
    func: Callable[..., Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def path(self) -> str:
        """The import path RQ stores in the job, and the only one a worker will run."""
        return f"{self.func.__module__}.{self.func.__qualname__}"

    @cached_property
    def signature(self) -> inspect.Signature:
        # eval_str: job modules may use `from __future__ import annotations`.
        return inspect.signature(self.func, eval_str=True)

    @property
    def call_signature(self) -> str:
        """``name(param: type, ...)`` as users call it: no return type, no ``typing.`` noise."""
        shown = self.signature.replace(return_annotation=inspect.Signature.empty)
        return f"{self.name}{shown}".replace("typing.", "")

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.func) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Check a Python call against the signature and annotations."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(f"{self.name}{self.signature}: {exc}") from None
        for pname, value in bound.arguments.items():
            self._check_value(pname, value)
        return bound

    def bind_text(self, tokens: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
        """Read command-line words as a call: ``value`` is positional, ``name=value`` a keyword.

        Values are converted with the parameter's annotation; a word of the form
        ``x=y`` is a keyword only when ``x`` names a parameter, so text such as
        ``"a=b"`` can still be passed positionally.
        """
        params = self.signature.parameters
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        var_positional = next((p for p in params.values() if p.kind is p.VAR_POSITIONAL), None)
        for token in tokens:
            key, sep, raw = token.partition("=")
            if (
                sep
                and key in params
                and params[key].kind not in (params[key].POSITIONAL_ONLY, params[key].VAR_POSITIONAL)
            ):
                if key in kwargs:
                    raise InvalidArgumentsError(f"{self.name}: {key} is given twice", param=key)
                kwargs[key] = self._convert(key, raw)
                continue
            if kwargs:
                raise InvalidArgumentsError(
                    f"{self.name}: positional value {token!r} after a keyword argument; "
                    "give positional values first, then name=value",
                )
            if len(args) < len(positional):
                args.append(self._convert(positional[len(args)].name, token))
            elif var_positional is not None:
                args.append(self._convert(var_positional.name, token))
            else:
                raise InvalidArgumentsError(
                    f"{self.name} takes {len(positional)} argument(s) ({_usage(self)}), got extra value {token!r}"
                )
        missing = [p.name for p in positional[len(args) :] if p.default is p.empty and p.name not in kwargs]
        missing += [
            p.name
            for p in params.values()
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in kwargs
        ]
        if missing:
            raise InvalidArgumentsError(
                f"{self.name}: missing argument(s) {', '.join(missing)} (expected: {_usage(self)})",
                param=missing[0],
            )
        self.bind(args, kwargs)
        return args, kwargs

    def _annotation(self, pname: str) -> Any:
        param = self.signature.parameters[pname]
        return Any if param.annotation is param.empty else param.annotation

    def _convert(self, pname: str, raw: str) -> Any:
        try:
            return convert_text(self._annotation(pname), raw)
        except ValueError as exc:
            raise InvalidArgumentsError(f"{self.name}: parameter {pname}: {exc}", param=pname) from None

    def _check_value(self, pname: str, value: Any) -> None:
        param = self.signature.parameters[pname]
        values: Iterable[Any] = (
            value
            if param.kind is param.VAR_POSITIONAL
            else (value.values() if param.kind is param.VAR_KEYWORD else (value,))
        )
        for item in values:
            problem = type_problem(self._annotation(pname), item)
            if problem is None:
                try:
                    json.dumps(item)
                except (TypeError, ValueError) as exc:
                    problem = f"value cannot be stored as JSON ({exc})"
            if problem:
                raise InvalidArgumentsError(f"{self.name}: parameter {pname}: {problem}", param=pname)


def _usage(entry: CatalogEntry) -> str:
    return " ".join(
        (f"[{p.name}]" if p.default is not p.empty else p.name) for p in entry.signature.parameters.values()
    )


def type_name(annotation: Any) -> str:
    if annotation is Any:
        return "any value"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    names = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "text",
        list: "a JSON list",
        dict: "a JSON object",
    }
    return names.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))


def convert_text(annotation: Any, raw: str) -> Any:
    """Turn one command-line word into the Python value the annotation asks for."""
    origin = typing.get_origin(annotation) or annotation
    if annotation is Any or annotation is str:
        return raw
    if origin is typing.Literal:
        for option in typing.get_args(annotation):
            if str(option) == raw:
                return option
        raise ValueError(f"{raw!r} is not {type_name(annotation)}")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and raw.lower() in ("none", "null"):
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return convert_text(option, raw)
            except ValueError:
                pass
        raise ValueError(f"{raw!r} is not {type_name(annotation)}")
    if origin is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"{raw!r} is not true or false (use true/false, yes/no, 1/0)")
    if origin is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if origin is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if origin in (list, dict, tuple):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{raw!r} is not valid JSON ({exc.msg}); expected {type_name(annotation)}") from None
        problem = type_problem(annotation, value)
        if problem:
            raise ValueError(problem)
        return value
    return raw


def type_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` does not fit ``annotation``, or None when it does (checked shallowly)."""
    origin = typing.get_origin(annotation) or annotation
    if annotation is Any:
        return None
    if origin is typing.Literal:
        return None if value in typing.get_args(annotation) else f"{value!r} is not {type_name(annotation)}"
    if origin in (typing.Union, types.UnionType):
        if any(type_problem(option, value) is None for option in typing.get_args(annotation)):
            return None
        return f"{value!r} is not {type_name(annotation)}"
    if annotation is type(None):
        return None if value is None else f"{value!r} is not null"
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if origin is tuple:
        origin = (tuple, list)
    if origin is int and isinstance(value, bool):
        return f"{value!r} is not an integer"
    if isinstance(origin, (type, tuple)) and not isinstance(value, origin):
        return f"{value!r} is not {type_name(annotation)}"
    return None


class Catalog:
    """The jobs found in the configured packages, by name and by import path."""

    def __init__(self, entries: Iterable[CatalogEntry]) -> None:
        self._by_name: dict[str, CatalogEntry] = {}
        for entry in entries:
            other = self._by_name.get(entry.name)
            if other is not None and other.path != entry.path:
                raise CatalogError(f"two jobs are named {entry.name!r}: {other.path} and {entry.path}")
            self._by_name[entry.name] = entry
        self._by_path = {entry.path: entry for entry in self._by_name.values()}

    def __iter__(self) -> typing.Iterator[CatalogEntry]:
        return iter(sorted(self._by_name.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name_or_func: str | Callable[..., Any]) -> CatalogEntry:
        if callable(name_or_func):
            spec = spec_of(name_or_func)
            entry = self._by_name.get(spec.name) if spec else None
            if entry is None or entry.func is not name_or_func:
                raise UnknownJobError(
                    f"{getattr(name_or_func, '__qualname__', name_or_func)!r} is not a catalog job; "
                    "declare it with @job in one of the job packages"
                )
            return entry
        try:
            return self._by_name[name_or_func]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise UnknownJobError(f"unknown job {name_or_func!r}; known jobs: {known}") from None

    def by_path(self, path: str) -> CatalogEntry | None:
        return self._by_path.get(path)


def discover(packages: Iterable[str]) -> Catalog:
    """Import every module of the given packages and collect their ``@job`` functions."""
    entries: list[CatalogEntry] = []
    for package_name in packages:
        try:
            package = importlib.import_module(package_name)
        except ImportError as exc:
            raise CatalogError(f"cannot import job package {package_name!r}: {exc}") from exc
        modules = [package]
        if hasattr(package, "__path__"):
            for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
                modules.append(importlib.import_module(info.name))
        for module in modules:
            for value in vars(module).values():
                spec = spec_of(value) if callable(value) else None
                if spec is not None and getattr(value, "__module__", None) == module.__name__:
                    entries.append(CatalogEntry(spec=spec, func=value))
    return Catalog(entries)


@lru_cache(maxsize=8)
def load_catalog(packages: tuple[str, ...]) -> Catalog:
    return discover(packages)


def get_catalog() -> Catalog:
    from taskctl.settings import get_settings

    return load_catalog(get_settings().job_packages)
