"""errors.py draws the exception tree as it is: every public exception of the package is
in it, under its real parent."""

from __future__ import annotations

import importlib
import pkgutil
import re

import orbitstream
from orbitstream import errors

_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z][A-Za-z]+(?:Error|Rejected))\b")


def _all_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(orbitstream.__path__, "orbitstream."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == info.name
                and not name.startswith("_")
            ):
                found[name] = obj
    return found


def _tree() -> list[tuple[int, str]]:
    doc = errors.__doc__ or ""
    out = []
    for line in doc.splitlines():
        m = _LINE.match(line.strip("\n")[4:] if line.startswith("    ") else line)
        if m and line.startswith("    "):
            out.append((len(m.group("indent")), m.group("name")))
    return out


def test_every_public_exception_is_drawn_under_its_parent() -> None:
    found = _all_exceptions()
    tree = _tree()
    drawn = {name for _, name in tree}
    missing = sorted(set(found) - drawn - {"Refusal"})
    assert not missing, f"not in the errors.py tree: {missing}"
    assert "Refusal" in (errors.__doc__ or "")
    stack: list[tuple[int, str]] = []
    for depth, name in tree:
        while stack and stack[-1][0] >= depth:
            stack.pop()
        cls = found.get(name) or getattr(errors, name)
        if stack:
            parent = found.get(stack[-1][1]) or getattr(errors, stack[-1][1])
            assert issubclass(cls, parent), f"{name} is drawn under {parent.__name__}"
        stack.append((depth, name))
    for name, cls in found.items():
        if name != "Refusal":
            assert issubclass(cls, errors.OrbitStreamError), name
