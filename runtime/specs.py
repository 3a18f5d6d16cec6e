"""Plant and policy specs: the one vocabulary of `rtdiff run`, `serve`, `collect`, `check` and
`bench deadline`.

A spec is a string with a scheme:

    sim:TASK                 a built-in simulated task (`rtdiff tasks`)
    mjcf:PATH.xml            any MuJoCo model with actuators
    gym:ENV_ID               any registered gymnasium env with Box spaces
    py:MODULE:ATTR           a user's object: a Plant (or Driver), a Planner, or a factory /
    py:path/to/file.py:ATTR  a plain callable, imported from a module or a file
    tcp://HOST:PORT, ipc://PATH   a plant behind the bridge (plants only)

and `--plant-arg KEY=VALUE` / `--policy-arg KEY=VALUE` give keyword arguments. A value is read
as a JSON literal when it is one (`3`, `0.5`, `true`, `[1, 2]`, `"text"`), else as the string
itself (`port=/dev/ttyUSB0`), so a user's factory receives ints, floats, bools and lists.

This module only parses and imports; it imports none of torch, mujoco, gymnasium or zmq. Which
package builds what is `runtime.cli.plants`'s business. Every error is a `SpecError`: one line
that names the spec and what is wrong with it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PLANT_SCHEMES",
    "POLICY_SCHEMES",
    "Spec",
    "SpecError",
    "has_methods",
    "load_object",
    "one_line",
    "parse_kv",
    "parse_spec",
    "takes_param",
]

PLANT_SCHEMES = ("sim", "mjcf", "gym", "py", "tcp", "ipc")
POLICY_SCHEMES = ("py",)  # besides `expert`, KIND:TASK and checkpoint directories

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class SpecError(ValueError):
    """A plant or policy spec that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Spec:
    """A parsed spec: `scheme` (one of PLANT_SCHEMES, or "" for a policy name such as
    `expert`), `target` (what follows `scheme:`; the whole text for tcp/ipc and plain names),
    and the keyword arguments given beside it."""

    scheme: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text


def parse_value(text: str) -> Any:
    """A `KEY=VALUE` value: a JSON literal when it parses as one, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_kv(items: Iterable[str], *, flag: str = "--plant-arg") -> dict[str, Any]:
    """`["rate=50", "ids=[1,2]", "port=/dev/ttyUSB0"]` -> {"rate": 50, "ids": [1, 2], ...}.

    Keys are identifiers (dashes become underscores, so `episode-ticks` reaches a factory as
    `episode_ticks`); a key given twice is an error, not a silent override."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise SpecError(f"{flag} {item!r}: expected KEY=VALUE with KEY an identifier")
        key = key.replace("-", "_")
        if key in out:
            raise SpecError(f"{flag} {key} given twice")
        out[key] = parse_value(value.strip())
    return out


def parse_spec(
    text: str, kwargs: dict[str, Any] | None = None, *, what: str = "plant"
) -> Spec:
    """Split `text` into scheme and target and check the form (not whether it exists).

    `what` is "plant" or "policy"; a policy spec without a scheme (`expert`, `rolling:TASK`, a
    checkpoint directory) comes back with scheme "" and the whole text as target."""
    text = text.strip()
    kw = dict(kwargs or {})
    if not text:
        raise SpecError(f"--{what} is empty")
    if text.startswith(("tcp://", "ipc://")):
        if what != "plant":
            raise SpecError(f"--{what} {text!r}: an endpoint is a plant, not a {what}")
        if kw:
            raise SpecError(f"--{what}-arg does not apply to a remote plant ({text})")
        return Spec(text[:3], text, kw, text)
    scheme, sep, target = text.partition(":")
    if what == "policy" and scheme != "py":
        return Spec("", text, kw, text)
    if not sep or scheme not in PLANT_SCHEMES:
        raise SpecError(
            f"--{what} {text!r}: expected one of sim:TASK, mjcf:PATH.xml, gym:ENV_ID, "
            "py:MODULE:ATTR, py:FILE.py:ATTR, tcp://HOST:PORT, ipc://PATH"
        )
    if not target:
        raise SpecError(f"--{what} {text!r}: nothing after {scheme}:")
    if scheme == "mjcf" and not target.endswith(".xml"):
        raise SpecError(f"--{what} {text!r}: an MJCF model is a .xml file")
    if scheme == "py":
        _split_py(target, text)
    return Spec(scheme, target, kw, text)


def _split_py(target: str, text: str) -> tuple[str, str]:
    """`MODULE:ATTR` or `path/file.py:ATTR` -> (module or path, attribute path)."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise SpecError(f"{text!r}: expected py:MODULE:ATTR or py:path/to/file.py:ATTR")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise SpecError(f"{text!r}: {attr!r} is not an attribute name")
    if not where.endswith(".py") and not all(p.isidentifier() for p in where.split(".")):
        raise SpecError(f"{text!r}: {where!r} is neither a module name nor a .py file")
    return where, attr


def load_object(spec: Spec) -> Any:
    """Import the object a `py:` spec names. A file is loaded as a module of its own (its
    directory is not put on sys.path); a module is imported normally, the current directory
    first on the path as with `python -m`."""
    where, attr = _split_py(spec.target, spec.text)
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise SpecError(f"{spec.text!r}: no file {path}")
        name = f"rtdiff_user_{abs(hash(str(path.resolve()))):x}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise SpecError(f"{spec.text!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module  # dataclasses and pickling-free introspection need it
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise SpecError(f"{spec.text!r}: importing {path} raised {one_line(exc)}") from None
    else:
        # like `python -m`: a module in the current directory is found (a console script's
        # sys.path starts at its own bin/ directory instead)
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise SpecError(f"{spec.text!r}: no module {exc.name!r}") from None
        except Exception as exc:
            raise SpecError(f"{spec.text!r}: importing {where} raised {one_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(f"{spec.text!r}: {where} has no attribute {attr!r}") from None
    return obj


def has_methods(obj: Any, names: Iterable[str]) -> bool:
    """`obj` is an instance (not a class) with every method in `names`: how a `py:` object is
    recognised as a ready Plant or Planner."""
    return not isinstance(obj, type) and all(callable(getattr(obj, n, None)) for n in names)


def takes_param(fn: Any, name: str, *, catch_all: bool = False) -> bool:
    """`fn` (a class: its constructor) names a parameter `name`; with `catch_all`, a
    `**kwargs` parameter counts too. False where the signature cannot be read."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or (catch_all and any(p.kind is p.VAR_KEYWORD
                                                for p in params.values()))


def one_line(exc: BaseException) -> str:
    """`TypeName: message` on one line (a user's exception, reported in a one-line error)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
