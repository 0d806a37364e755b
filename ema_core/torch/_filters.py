"""The ``include=`` / ``exclude=`` filters of an ``EMA``'s names: globs (matched against the
name the EMA gives and the wrapped model's own), lists of them, or a predicate on the name; and
the hint a filter that kept nothing gets."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any


def matcher(rule: Any, name: str, default: bool) -> Callable[[str, str], bool]:
    """A predicate on ``(name, raw name)`` from a glob, a list of globs or a callable
    (``default`` for None). Globs match the name as the EMA gives it or as the wrapped model
    lists it (``_orig_mod.0.weight`` from a compiled model's ``named_parameters()``); a
    callable is asked about the EMA's name only."""
    if rule is None:
        return lambda _, __: default
    if callable(rule):
        return lambda n, _: bool(rule(n))
    if isinstance(rule, Iterable):  # a str too: one pattern
        patterns = [rule] if isinstance(rule, str) else list(rule)
        if all(isinstance(p, str) for p in patterns):
            return lambda n, raw: any(
                fnmatch.fnmatchcase(n, p) or (raw not in ("", n) and fnmatch.fnmatchcase(raw, p))
                for p in patterns
            )
    raise TypeError(
        f"{name} must be None, a glob pattern, a list of patterns or a callable name -> bool, "
        f"got {rule!r}"
    )


def filter_hint(include: Any, exclude: Any, names: list[str]) -> str:
    """How the filters read names, and the first names there, for a filter that kept none."""
    if (include is None and exclude is None) or not names:
        return ""
    return (
        f": patterns are globs matched against full names (e.g. 'encoder.*', '*.weight'); "
        f"its names are {names[:3]}{' ...' if len(names) > 3 else ''} ({len(names)} in all)"
    )
