"""Space files (``--space FILE.toml``): fix, narrow, widen or drop dimensions of a base space.

```toml
[space]
"quantize.mode" = "int8-static"                           # a value fixes the setting
"prune.ratio" = { low = 0.3, high = 0.9 }                 # a table sets a range
"prune.criterion" = ["l2", "lamp"]                        # a list sets the choices
drop = ["cluster.k", "prune.steps"]                       # dropped settings keep their defaults
profile_epochs = 2.0                                      # distillation budget of the profiles
```

Without a ``[space]`` table the top level is read instead. Unquoted dotted keys
(``prune.ratio = ...``) and ``[space.prune]`` tables work too. Other tables (``[workload]``,
``[search]``) belong to the study file and are ignored here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from spaces._dimensions import (
    Choice,
    Dimension,
    Fixed,
    FloatRange,
    IntRange,
    SpaceError,
    _is_number,
)
from spaces._space import SearchSpace, default_space
from stages.config import valid_keys

_KEYS: dict[str, type] = valid_keys()
_SECTIONS = tuple(dict.fromkeys(key.split(".", 1)[0] for key in _KEYS))
_RANGE_OPTIONS = ("low", "high", "log", "step")
_KIND_WORDS = {float: "a number", int: "an integer", str: "a string"}


DEMO_SPACE = Path(__file__).with_name("demo.toml")


def demo_space() -> SearchSpace:
    """The built-in demo's space: the default space with a distillation budget sized for digits."""
    return load_space(DEMO_SPACE)


def load_space(path: Path, base: SearchSpace | None = None) -> SearchSpace:
    """The space of ``path``: ``base`` (default: ``default_space()``) with the file's changes.

    Every problem (unreadable file, TOML syntax, unknown key, bad range or value) raises a one-line
    ``SpaceError`` naming the file and the key.
    """
    base = default_space() if base is None else base
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SpaceError(f"cannot read space file {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise SpaceError(f"{path}: not a TOML file (it is not UTF-8 text).") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{path}: TOML syntax error: {exc}.") from None

    entries = _space_entries(data, path)
    drop = _drop_list(entries.pop("drop", []), entries, path)
    profile_epochs = entries.pop("profile_epochs", None)
    dims = dict(base.dimensions)
    for key, value in entries.items():
        if key not in _KEYS:
            raise SpaceError(
                f"{path}: unknown setting {key!r}; valid settings: {', '.join(_KEYS)} "
                "(and drop, profile_epochs)."
            )
        dims[key] = _dimension(key, value, dims.get(key), path)
    for key in drop:
        dims.pop(key, None)

    if profile_epochs is None:
        fixed_epochs = dims.get("distill.epochs")
        # Profiles should train as long as every trial does when the budget is fixed.
        epochs = fixed_epochs.value if isinstance(fixed_epochs, Fixed) else None
        if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs > 0:
            profile_epochs = epochs
        else:
            profile_epochs = base.profile_epochs
    elif not _is_number(profile_epochs):
        raise SpaceError(
            f"{path}: profile_epochs must be a number > 0, but got {profile_epochs!r}."
        )
    try:
        return SearchSpace(dims, profile_epochs=profile_epochs)
    except SpaceError as exc:
        raise SpaceError(f"{path}: {exc}") from None


def _space_entries(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The space's entries with flat keys: ``[space]``, or the top level without one."""
    if "space" in data:
        table = data["space"]
        if not isinstance(table, dict):
            raise SpaceError(f"{path}: space must be a table of settings, but got {table!r}.")
        return _flatten(table, path, ignore_tables=False)
    return _flatten(data, path, ignore_tables=True)


def _flatten(table: dict[str, Any], path: Path, *, ignore_tables: bool) -> dict[str, Any]:
    """Join ``prune = { ratio = ... }`` (what TOML makes of an unquoted ``prune.ratio``) into
    ``"prune.ratio"``; with ``ignore_tables``, skip tables that are not stage sections."""
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in flat:
            raise SpaceError(
                f"{path}: {key} is set twice (quoted and dotted keys name the same setting)."
            )
        flat[key] = value

    for key, value in table.items():
        if key in _SECTIONS and isinstance(value, dict):
            for name, inner in value.items():
                put(f"{key}.{name}", inner)
        elif ignore_tables and isinstance(value, dict) and key not in _KEYS:
            continue
        else:
            put(key, value)
    return flat


def _drop_list(raw: Any, entries: dict[str, Any], path: Path) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(key, str) for key in raw):
        raise SpaceError(f"{path}: drop must be a list of setting keys, but got {raw!r}.")
    for key in raw:
        if key not in _KEYS:
            raise SpaceError(
                f"{path}: drop names unknown setting {key!r}; valid settings: {', '.join(_KEYS)}."
            )
        if key in entries:
            raise SpaceError(f"{path}: {key} is both set and dropped; keep one of the two.")
    return raw


def _value(key: str, raw: Any, path: Path, what: str = "") -> Any:
    """``raw`` checked against the type of setting ``key`` (an integer is a fine number)."""
    kind = _KEYS[key]
    ok = (
        _is_number(raw)
        if kind is float
        else isinstance(raw, int) and not isinstance(raw, bool)
        if kind is int
        else isinstance(raw, str)
    )
    if not ok:
        raise SpaceError(f"{path}: {key}{what} must be {_KIND_WORDS[kind]}, but got {raw!r}.")
    return float(raw) if kind is float else raw


def _dimension(key: str, raw: Any, current: Dimension | None, path: Path) -> Dimension:
    """The dimension a file entry declares; ``current`` lends a range's unspecified options."""
    try:
        if isinstance(raw, dict):
            return _range(key, raw, current, path)
        if isinstance(raw, list):
            if not raw:
                raise SpaceError(
                    f"{path}: {key} has an empty list of choices; give at least one value."
                )
            return Choice(tuple(_value(key, item, path, " choices") for item in raw))
        if isinstance(raw, (bool, int, float, str)):
            return Fixed(_value(key, raw, path))
    except SpaceError as exc:
        message = str(exc)
        raise SpaceError(
            message if message.startswith(f"{path}:") else f"{path}: {key}: {message}"
        ) from None
    raise SpaceError(
        f"{path}: {key} takes a value, a list of choices or a range table, but got {raw!r}."
    )


def _range(key: str, raw: dict[str, Any], current: Dimension | None, path: Path) -> Dimension:
    kind = _KEYS[key]
    unknown = [name for name in raw if name not in _RANGE_OPTIONS]
    if unknown:
        raise SpaceError(
            f"unknown range option(s) {', '.join(unknown)}; expected {', '.join(_RANGE_OPTIONS)}."
        )
    if kind is str:
        raise SpaceError("a string setting takes a value or a list of choices, not a range.")
    range_type = FloatRange if kind is float else IntRange
    inherited = current if isinstance(current, range_type) else None
    bounds = {}
    for name in ("low", "high"):
        if name in raw:
            bounds[name] = _value(key, raw[name], path, f" {name}")
        elif inherited is not None:
            bounds[name] = getattr(inherited, name)
        else:
            raise SpaceError(
                f"the range needs {name} (this space has no range for {key} to narrow)."
            )
    options: dict[str, Any] = {}
    if "log" in raw:
        options["log"] = raw["log"]
    if "step" in raw:
        options["step"] = _value(key, raw["step"], path, " step")
    # An option kept from the base range gives way to an explicit one it cannot go with.
    step_excludes_log = "step" in raw and (range_type is FloatRange or options["step"] != 1)
    if inherited is not None:
        if "log" not in raw and not step_excludes_log:
            options["log"] = inherited.log
        if "step" not in raw and not raw.get("log", False):
            options["step"] = inherited.step
    return range_type(bounds["low"], bounds["high"], **options)
