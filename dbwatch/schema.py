"""The machinery under every config file dbwatch reads: msgspec Structs declare the keys once, this module loads them.

A file's shape is declared as frozen `msgspec.Struct`s (types, `Literal` choices, defaults, `msgspec.Meta`
descriptions and bounds, cross-field checks in `__post_init__`). `convert()` turns parsed YAML into them:
`${VAR}` expansion, a key given as null meaning its default, unknown keys refused before any value is looked at,
and errors rendered here, naming the key path and never a value (msgspec's own messages may quote one).
The types below that YAML spells differently from the value a consumer gets (`Duration`, `Size`, `ReadablePath`,
`DSN`, `Secret`, ...) are decoded by one hook table, which also gives their JSON Schema.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import msgspec.inspect as mi
import yaml

from dbwatch.secret import DSN, DSNError, Secret

__all__ = [
    "BcryptHash",
    "ConfigError",
    "Delay",
    "Duration",
    "Listen",
    "Objective",
    "ReadablePath",
    "SecretRef",
    "Size",
    "Statuses",
    "Struct",
    "convert",
    "expand",
    "json_schema",
    "parse_dsn",
    "parse_duration",
    "parse_listen",
    "read_text",
    "read_yaml",
]

DEFAULT_PORT: Final = 9839
_ENV_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DURATION_PATTERN: Final = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
_DURATION_RE: Final = re.compile(DURATION_PATTERN)
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
SIZE_PATTERN: Final = r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$"
_SIZE_RE: Final = re.compile(SIZE_PATTERN)
_SIZE_UNITS: Final = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 10**6,
    "GB": 10**9,
}


class ConfigError(ValueError):
    """A config problem; the message starts with the key path and never contains a secret."""


class Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every declared config section: immutable, unknown keys refused."""


# Types whose YAML spelling differs from the value consumers get. To mypy each is the value's type; to msgspec a
# subclass of it, decoded by `_HOOKS` (msgspec checks that a decode hook returns an instance of the declared type).
if TYPE_CHECKING:
    Duration = float
    Delay = float
    Objective = float
    Size = int
    ReadablePath = str
    Listen = tuple[str, int]
    SecretRef = Secret
    BcryptHash = bytes
    Statuses = tuple[int, ...]
else:

    class Statuses(tuple):
        """An HTTP status, or a list of them."""

        __slots__ = ()

    class BcryptHash(bytes):
        """A bcrypt hash, `$2y$10$...` (e.g. from `htpasswd -nBC 10 ""`)."""

    class Duration(float):
        """Seconds > 0: a number, or a string like `10s`, `500ms`, `2m`, `1h`, `1d`."""

    class Delay(float):
        """Seconds >= 0: a number, or a string like `2m`."""

    class Objective(float):
        """A percentage like 99.9 or "99.9%", or a ratio like 0.999; below 100."""

    class Size(int):
        """Bytes >= 1024: a number, or a string like `64KiB`, `1MiB`."""

    class ReadablePath(str):
        """A path to a file dbwatch can read (checked at load)."""

        __slots__ = ()

    class Listen(tuple):
        """`host:port`, `[::1]:port` or `:port`."""

        __slots__ = ()

    class SecretRef(Secret):
        """`{env: NAME}` or `{file: PATH}`: where a secret value is read from."""

        __slots__ = ()


def expand(text: str, path: str) -> str:
    """`${VAR}` and `${VAR:-default}` from the environment; an unset variable without a default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is not None:
                return default
            raise ConfigError(f"{path or 'config'}: environment variable {name} is not set")
        return value

    return _ENV_RE.sub(sub, text)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like `5s`, `500ms`, `2m`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")  # noqa: TRY004 - callers catch ValueError for every bad duration
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("expected a duration")


def parse_listen(text: str, path: str = "listen") -> tuple[str, int]:
    """`host:port`, `[::1]:port` or `:port` into (host, port)."""
    m = re.match(r"^(?:\[([^\]]+)\]|([^:\[\]]*)):(\d{1,5})$", text.strip())
    if not m:
        raise ConfigError(f"{path}: expected host:port, e.g. 127.0.0.1:{DEFAULT_PORT}")
    host = m.group(1) or m.group(2) or "0.0.0.0"  # noqa: S104 - ":port" means all interfaces, as in Go exporters
    port = int(m.group(3))
    if not 0 <= port < 65536:
        raise ConfigError(f"{path}: port out of range")
    return host, port


def _typename(value: object) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {_typename(value)}")  # noqa: TRY004 - msgspec reports ValueErrors
    return value


def _duration(value: object) -> Duration:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"expected a duration in seconds or like 10s / 500ms, got {_typename(value)}") from None
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError("must be > 0")
    return Duration(seconds)


def _delay(value: object) -> Delay:
    return Delay(0.0 if value in (0, "0", "0s") and not isinstance(value, bool) else _duration(value))


def _objective(value: object) -> Objective:
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        number = float(text) if isinstance(text, str | int | float) and not isinstance(text, bool) else math.nan
    except ValueError:
        number = math.nan
    ratio = number / 100 if number >= 1 else number
    if not 0 < ratio < 1:
        raise ValueError("expected a percentage like 99.9 (or a ratio like 0.999), below 100")
    return Objective(round(ratio, 10))


def _size(value: object) -> Size:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE_RE.match(value) if isinstance(value, str) else None
        if not m:
            raise ValueError("expected a size like 1048576 or 1MiB")
        n = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if n < 1024:
        raise ValueError("must be at least 1KiB")
    return Size(n)


def _readable(value: object) -> ReadablePath:
    path = _string(value, "a file path")
    if path and not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {path}")
    return ReadablePath(path)


def _make(cls: Any, value: object) -> Any:
    """An instance of a marker type whose mypy view is a generic alias (Listen, Statuses)."""
    return cls(value)


def _listen(value: object) -> Listen:
    try:
        listen: Listen = _make(Listen, parse_listen(_string(value, "host:port"), ""))
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix(": ")) from None
    return listen


def read_text(path: str) -> str:
    """A file's text; the error (a ValueError for msgspec to place) names the path and the reason only."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"cannot read {path}: {reason}") from None


def parse_dsn(text: str) -> DSN:
    """DSN.parse with its error as a ValueError (for msgspec to place at the key)."""
    try:
        return DSN.parse(text)
    except DSNError as exc:
        raise ValueError(str(exc)) from None


def _secret_ref(value: object) -> SecretRef:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping {{env: NAME}} or {{file: PATH}}, got {_typename(value)}")  # noqa: TRY004
    unknown = sorted(str(k) for k in value if k not in ("env", "file"))
    if unknown:
        raise ValueError(f".{unknown[0]}: unknown key")
    given = [k for k in ("env", "file") if value.get(k) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of env, file")
    key = given[0]
    where = _string(value[key], "a string")
    if key == "env":
        text = os.environ.get(where)
        if text is None:
            raise ValueError(f".env: environment variable {where} is not set")
    else:
        try:
            text = read_text(where).rstrip("\r\n")
        except ValueError as exc:
            raise ValueError(f".file: {exc}") from None
    if not text:
        raise ValueError("the secret is empty")
    return SecretRef(text)


def _statuses(value: object) -> Statuses:
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int) or not 100 <= v <= 599:
            raise ValueError((f"[{i}]: " if isinstance(value, list) else "") + "expected an HTTP status")
    if not items:
        raise ValueError("give at least one status")
    statuses: Statuses = _make(Statuses, items)
    return statuses


_BCRYPT_RE: Final = re.compile(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$")


def _bcrypt_hash(value: object) -> BcryptHash:
    if not isinstance(value, str) or not _BCRYPT_RE.match(value):
        raise ValueError('expected a bcrypt hash ($2y$10$…, e.g. from `htpasswd -nBC 10 ""`)')
    import bcrypt  # noqa: PLC0415 - only a web config with basic_auth_users loads it

    try:
        bcrypt.checkpw(b"", value.encode())
    except ValueError:
        raise ValueError("not a valid bcrypt hash") from None
    return BcryptHash(value.encode())


_STRING: Final[dict[str, Any]] = {"type": "string"}
_DURATION: Final = {"type": "string", "pattern": DURATION_PATTERN}
_STATUS: Final = {"type": "integer", "minimum": 100, "maximum": 599}
# type -> (decode from YAML data, JSON Schema of the YAML spelling)
_HOOKS: Final[dict[Any, tuple[Callable[[Any], Any], dict[str, Any]]]] = {
    Duration: (_duration, {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, _DURATION]}),
    Delay: (_delay, {"anyOf": [{"type": "number", "minimum": 0}, _DURATION]}),
    Objective: (
        _objective,
        {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}, {"type": "string"}]},
    ),
    Size: (_size, {"anyOf": [{"type": "integer", "minimum": 1024}, {"type": "string", "pattern": SIZE_PATTERN}]}),
    ReadablePath: (_readable, _STRING),
    Listen: (_listen, {"type": "string", "pattern": r"^(\[[^\]]+\]|[^:\[\]]*):\d{1,5}$"}),
    Secret: (lambda v: Secret(_string(v, "a string")), _STRING),
    SecretRef: (
        _secret_ref,
        {
            "type": "object",
            "properties": {"env": _STRING, "file": _STRING},
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
    ),
    Statuses: (
        _statuses,
        {"anyOf": [_STATUS, {"type": "array", "items": _STATUS, "minItems": 1}]},
    ),
    BcryptHash: (_bcrypt_hash, {"type": "string", "pattern": _BCRYPT_RE.pattern}),
}


def _dec_hook(typ: type, value: object) -> object:
    if isinstance(value, typ):  # decoded by _normalise, where the key path is known
        return value
    hook = _HOOKS.get(typ)
    if hook is None:
        raise NotImplementedError(typ.__name__)
    return hook[0](value)


def _schema_hook(typ: type) -> dict[str, Any]:
    hook = _HOOKS.get(typ)
    if hook is None:
        raise NotImplementedError(typ.__name__)
    return {**hook[1], **({"description": typ.__doc__} if typ.__doc__ and typ.__module__ == __name__ else {})}


@functools.cache
def _info(typ: Any) -> mi.Type:
    return mi.type_info(typ)


def _inline(cls: type) -> tuple[str, str, str] | None:
    """`(field, tag, value)`: when the mapping's `tag` is `value`, `field`'s keys are written inline."""
    inline: tuple[str, str, str] | None = getattr(cls, "__inline__", None)
    return inline


def _deep_expand(value: object, path: str) -> object:
    if isinstance(value, str):
        return expand(value, path)
    if isinstance(value, list):
        return [_deep_expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _deep_expand(v, f"{path}.{k}") for k, v in value.items()}
    return value


def _normalise(value: object, t: mi.Type, path: str) -> object:
    """Prepare parsed YAML for msgspec: expand `${VAR}`, drop null keys, refuse unknown keys first, inline sections."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        members = [m.type if isinstance(m, mi.Metadata) else m for m in t.types]
        for m in members:
            if (isinstance(value, Mapping) and isinstance(m, mi.StructType | mi.DictType)) or (
                isinstance(value, list) and isinstance(m, mi.ListType | mi.VarTupleType)
            ):
                return _normalise(value, m, path)
        t = next((m for m in members if isinstance(m, mi.CustomType)), t)
    if isinstance(t, mi.CustomType) and t.cls in _HOOKS:
        try:
            return _HOOKS[t.cls][0](_deep_expand(value, path))
        except ValueError as exc:
            raise ConfigError(_own(path, str(exc))) from None
    if isinstance(t, mi.UnionType):
        return _deep_expand(value, path)
    if isinstance(t, mi.StructType) and isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(f"{_join(path, str(key))}: keys must be strings")
        fields = {f.encode_name: f for f in t.fields}
        # A null value means the default, except where any JSON value is allowed (where null is a value).
        data = {k: v for k, v in value.items() if v is not None or (k in fields and _is_any(fields[k].type))}
        inline = _inline(t.cls)
        inlined: dict[str, object] = {}
        if inline is not None and data.get(inline[1]) == inline[2]:
            inner = _struct_of(fields[inline[0]].type)
            names = {f.encode_name for f in inner.fields}
            inlined = {k: data.pop(k) for k in list(data) if k in names and k not in fields}
        unknown = [k for k in data if k not in fields or (inline is not None and k == inline[0])]
        if unknown:
            raise ConfigError(f"{_join(path, unknown[0])}: unknown key")
        out = {k: _normalise(v, fields[k].type, _join(path, k)) for k, v in data.items()}
        if inline is not None and data.get(inline[1]) == inline[2]:
            out[inline[0]] = _normalise(inlined, fields[inline[0]].type, path)
        return out
    if isinstance(t, mi.DictType) and isinstance(value, Mapping):
        out_d: dict[object, object] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{_join(path, str(k))}: keys must be strings")
            out_d[k] = _normalise(v, t.value_type, _join(path, k))
        return out_d
    if isinstance(t, mi.ListType | mi.VarTupleType) and isinstance(value, list):
        return [_normalise(v, t.item_type, f"{path}[{i}]") for i, v in enumerate(value)]
    return _deep_expand(value, path)


def _is_any(t: mi.Type) -> bool:
    while isinstance(t, mi.Metadata):
        t = t.type
    return isinstance(t, mi.AnyType)


def _struct_of(t: mi.Type) -> mi.StructType:
    """The Struct in `X | None` (an inline field's type)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    for m in t.types if isinstance(t, mi.UnionType) else (t,):
        if isinstance(m, mi.StructType):
            return m
    raise TypeError("an inline field must be a Struct")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_AT_RE: Final = re.compile(r" - at `\$(.*)`$")
_SEG_RE: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_HUMAN: Final = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _at(root: mi.Type, rel: str) -> tuple[mi.Type, dict[str, Any]]:
    """The type at a msgspec error path, with the `Meta(extra=...)` found on the way."""
    t, extra = root, {}
    for m in _SEG_RE.finditer(rel):
        while isinstance(t, mi.Metadata | mi.UnionType):
            if isinstance(t, mi.Metadata):
                extra = t.extra or {}
                t = t.type
            else:
                t = next((x for x in t.types if not isinstance(x, mi.NoneType)), t.types[0])
        if m.group(1) is not None and isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == m.group(1)), t)
        elif m.group(1) is not None and isinstance(t, mi.DictType):
            t = t.value_type
        elif isinstance(t, mi.ListType | mi.VarTupleType):
            t = t.item_type
        extra = {}
    while isinstance(t, mi.Metadata | mi.UnionType):
        if isinstance(t, mi.Metadata):
            extra = {**(t.extra or {}), **extra}
            t = t.type
        else:
            t = next((x for x in t.types if not isinstance(x, mi.NoneType)), t.types[0])
    return t, extra


def _own(path: str, msg: str) -> str:
    """One of our messages at `path`: `.key: ...` and `[i]: ...` name a key below it."""
    return f"{path}{msg}".lstrip(".") if msg[:1] in ".[" else f"{path or 'config'}: {msg}"


def _render(exc: msgspec.ValidationError, typ: type, base: str) -> str:
    """Our wording for a msgspec error: the key path, what was expected; never the value."""
    text = str(exc)
    m = _AT_RE.search(text)
    rel = m.group(1) if m else ""
    msg = text[: m.start()] if m else text
    path = (base + rel).lstrip(".")
    for name in _inline_fields(typ):  # an inlined section's keys are the enclosing mapping's
        path = path.replace(f".{name}.", ".").removesuffix(f".{name}")
    # Messages of our hooks and __post_init__ checks start lower-case, or with the key they name (`.key: ...`,
    # `[1]: ...`); msgspec's start upper-case and may quote the value, so they are reworded below.
    if msg[:1] in ".[" or msg[:1].islower():
        return _own(path, msg)
    t, extra = _at(_info(typ), rel)
    where = path or "config"
    if g := re.match(r"Object (missing required|contains unknown) field `([^`]+)`$", msg):
        what = "missing" if g.group(1) == "missing required" else "unknown key"
        return f"{_join(path, g.group(2))}: {what}"
    if isinstance(t, mi.LiteralType | mi.EnumType) and msg.startswith("Invalid enum value"):
        values = t.values if isinstance(t, mi.LiteralType) else tuple(e.value for e in t.cls)
        return f"{where}: must be one of {', '.join(str(v) for v in values if v != '')}"
    if isinstance(t, mi.IntType | mi.FloatType) and re.match(r"Expected `(int|float)` [<>]", msg):
        low = t.ge if t.ge is not None else t.gt
        if t.ge is not None and t.le is not None:
            return f"{where}: must be between {t.ge} and {t.le}"
        if low is not None and re.search(r"[>]", msg):
            return f"{where}: must be {'>=' if t.ge is not None else '>'} {low}"
        return f"{where}: must be {'<=' if t.le is not None else '<'} {t.le if t.le is not None else t.lt}"
    if msg.startswith("Expected `str` matching regex"):
        return f"{where}: {extra.get('hint', 'does not match the expected pattern')}"
    if g := re.match(r"Expected `(str|array|object)` of length ([<>]=) (\d+)$", msg):
        unit = "characters" if g.group(1) == "str" else "items"
        return f"{where}: {'at least' if g.group(2) == '>=' else 'at most'} {g.group(3)} {unit}"
    if g := re.match(r"Expected `([^`]+)`, got `([a-z]+)`$", msg):
        want = " or ".join(_HUMAN.get(w.strip(), "a " + w.strip()) for w in g.group(1).split("|"))
        return f"{where}: expected {want}, got {_HUMAN.get(g.group(2), g.group(2)).removeprefix('a ')}"
    return f"{where}: invalid value"


@functools.cache
def _inline_fields(typ: Any) -> frozenset[str]:
    """Names of the inlined sections anywhere in `typ`."""
    found: set[str] = set()
    seen: set[type] = set()

    def walk(t: mi.Type) -> None:
        if isinstance(t, mi.Metadata):
            walk(t.type)
        elif isinstance(t, mi.UnionType):
            for m in t.types:
                walk(m)
        elif isinstance(t, mi.ListType | mi.VarTupleType):
            walk(t.item_type)
        elif isinstance(t, mi.DictType):
            walk(t.value_type)
        elif isinstance(t, mi.StructType) and t.cls not in seen:
            seen.add(t.cls)
            if inline := _inline(t.cls):
                found.add(inline[0])
            for f in t.fields:
                walk(f.type)

    walk(_info(typ))
    return frozenset(found)


def convert(raw: object, typ: Any, path: str = "", prepare: Callable[[object], object] | None = None) -> Any:
    """Validate parsed YAML into `typ`; raises ConfigError naming the key path, never quoting a value.

    `prepare` sees the parsed YAML first: to fill in defaults that come from other keys, or to refuse a key with a
    better message than "unknown key".
    """
    root = _info(typ)
    try:
        if prepare is not None:
            raw = prepare(raw)
        data = _normalise(raw if raw is not None else {}, root, path)
        return msgspec.convert(data, typ, strict=True, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_render(exc, typ, path)) from None
    except RecursionError:
        raise ConfigError(f"{path or 'config'}: nested too deeply") from None


def json_schema(typ: type, title: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a declared file, for editors and `dbwatch config schema`."""
    schema = msgspec.json.schema(typ, schema_hook=_schema_hook)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}


def read_yaml(path: str | Path, what: str = "config") -> object:
    """Parse a YAML file; errors name the file and position but never echo a line (it may hold a password)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8") from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: YAML syntax error") from None


def dumps_schema(typ: type, title: str) -> str:
    """The JSON Schema as indented text."""
    return json.dumps(json_schema(typ, title), indent=2) + "\n"
