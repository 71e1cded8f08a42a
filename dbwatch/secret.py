"""Secrets and DSNs: parsed once, redacted in every repr/str, revealed only at the driver call."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DSN", "DSNError", "Secret", "scrub"]

REDACTED: Final = "***"

# libpq keywords we pass on; anything else in a pasted DSN is ignored (names logged, never values).
_KNOWN_PARAMS: Final = frozenset(
    {"host", "port", "user", "password", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey", "ssl"}
)
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SCHEMES: Final = (
    "postgresql",
    "postgres",
    "postgresql+asyncpg",
    "postgresql+psycopg",  # SQLAlchemy 2.1's default driver, sync or async engine
    "postgresql+psycopg_async",
    "postgresql+psycopg2",
)


class DSNError(ValueError):
    """A DSN that cannot be parsed; the message never contains the DSN itself."""


class Secret:
    """A string that never formats itself; call `reveal()` only where the driver needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The raw value. Never log, format or label it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class DSN:
    """A parsed PostgreSQL DSN. `str()` masks the password; `password.reveal()` is for the driver only."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: Secret = field(default_factory=lambda: Secret(""))
    database: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> DSN:
        """Parse a URL (`postgresql://`, `postgresql+asyncpg://`, `postgresql+psycopg://`, …) or libpq key=value."""
        text = text.strip()
        if not text:
            raise DSNError("DSN is empty")
        if "://" in text:
            return cls._parse_url(text)
        return cls._parse_keywords(text)

    @classmethod
    def _parse_url(cls, text: str) -> DSN:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            raise DSNError(
                f"unsupported DSN scheme {scheme!r} (expected postgresql://, postgresql+asyncpg:// or postgresql+psycopg://)"
            )
        # An unencoded '/', '?' or '#' in the password ends the authority for libpq, asyncpg and urlsplit, but not
        # for SQLAlchemy's make_url (its password is everything up to the '@'): `postgresql://u:1234/pw@h/db` is
        # host `u`, port 1234 to one and host `h` to the other. An '@' after the authority is that ambiguity:
        # refused, and the message quotes nothing of the DSN.
        rest = text.split("://", 1)[1]
        authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        if "@" in rest[authority_end:]:
            raise DSNError(
                "URL DSN has an '@' after the host part: percent-encode '/', '?', '#' and '@' in the user name,"
                " password and parameters (%2F, %3F, %23, %40)"
            )
        try:
            # urlsplit takes no `_` in a scheme (psycopg_async): the netloc is parsed under a plain one
            parts = urllib.parse.urlsplit("postgresql://" + rest)
        except ValueError:  # urlsplit's own message may quote the netloc, password included
            raise DSNError("malformed URL DSN (unbalanced [ ] around the host?)") from None
        netloc = parts.netloc
        userinfo, _, hostport = netloc.rpartition("@")
        if "," in hostport:
            raise DSNError("multi-host DSNs are not supported; configure one target per host")
        user = password = None
        if userinfo:
            raw_user, sep, raw_pw = userinfo.partition(":")
            user = urllib.parse.unquote(raw_user) or None
            password = urllib.parse.unquote(raw_pw) if sep else None
        host: str | None = None
        port: int | None = None
        if hostport:
            if hostport.startswith("["):
                h, _, rest = hostport[1:].partition("]")
                host = h
                port_s = rest[1:] if rest.startswith(":") else ""
            else:
                h, _, port_s = hostport.partition(":")
                host = urllib.parse.unquote(h) or None
            port = _port(port_s) if port_s else None
        database = urllib.parse.unquote(parts.path.lstrip("/")) or None
        query: dict[str, str] = {}
        try:
            pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise DSNError("DSN query string is malformed") from None
        for key, value in pairs:
            query[key] = value
        return cls._build(host, port, user, password, database, query)

    @classmethod
    def _parse_keywords(cls, text: str) -> DSN:
        query: dict[str, str] = {}
        pos = 0
        pattern = re.compile(r"\s*([A-Za-z_]+)\s*=\s*")
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = pattern.match(text, pos)
            if not m:
                raise DSNError("DSN is neither a URL nor a key=value string")
            key = m.group(1)
            pos = m.end()
            value_chars: list[str] = []
            if pos < len(text) and text[pos] == "'":
                pos += 1
                while pos < len(text) and text[pos] != "'":
                    if text[pos] == "\\" and pos + 1 < len(text):
                        pos += 1
                    value_chars.append(text[pos])
                    pos += 1
                if pos >= len(text):
                    raise DSNError(f"DSN keyword {key!r} has an unterminated quoted value")
                pos += 1
            else:
                while pos < len(text) and not text[pos].isspace():
                    if text[pos] == "\\" and pos + 1 < len(text):
                        pos += 1
                    value_chars.append(text[pos])
                    pos += 1
            query[key] = "".join(value_chars)
        host = query.pop("host", None) or None
        port_s = query.pop("port", None)
        user = query.pop("user", None) or None
        password = query.pop("password", None)
        database = query.pop("dbname", None) or None
        if host and "," in host:
            raise DSNError("multi-host DSNs are not supported; configure one target per host")
        return cls._build(host, _port(port_s) if port_s else None, user, password, database, query)

    @classmethod
    def _build(
        cls,
        host: str | None,
        port: int | None,
        user: str | None,
        password: str | None,
        database: str | None,
        query: dict[str, str],
    ) -> DSN:
        # libpq-style query overrides: ?host=/var/run/postgresql&port=5433&user=…
        host = query.pop("host", None) or host
        if "port" in query:
            port = _port(query.pop("port"))
        user = query.pop("user", None) or user
        if "password" in query:
            password = query.pop("password")
        database = query.pop("dbname", None) or database
        if "ssl" in query:  # SQLAlchemy's asyncpg dialect spells sslmode as ssl=
            query.setdefault("sslmode", query.pop("ssl"))
        params: list[tuple[str, str]] = []
        ignored: list[str] = []
        for key, value in sorted(query.items()):
            if key in _KNOWN_PARAMS:
                params.append((key, value))
            else:
                ignored.append(key)
        sslmode = dict(params).get("sslmode")
        if sslmode is not None and sslmode not in _SSLMODES:
            raise DSNError(f"sslmode must be one of {', '.join(_SSLMODES)}")
        return cls(host, port, user, Secret(password or ""), database, tuple(params), tuple(ignored))

    def with_params(self, **overrides: str) -> DSN:
        """A copy with libpq parameters (sslmode, sslrootcert, …) set."""
        merged = dict(self.params)
        merged.update({k: v for k, v in overrides.items() if v})
        return DSN(self.host, self.port, self.user, self.password, self.database, tuple(sorted(merged.items())))

    def param(self, key: str) -> str | None:
        """One libpq parameter, or None."""
        return dict(self.params).get(key)

    def __str__(self) -> str:
        auth = ""
        if self.user:
            auth = urllib.parse.quote(self.user, safe="")
            if self.password:
                auth += ":" + REDACTED
            auth += "@"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        if self.host and self.host.startswith("/"):
            host = ""
        port = f":{self.port}" if self.port else ""
        query = urllib.parse.urlencode(self.params)
        if self.host and self.host.startswith("/"):
            query = urllib.parse.urlencode([("host", self.host), *self.params])
        return f"postgresql://{auth}{host}{port}/{self.database or ''}" + (f"?{query}" if query else "")

    def __repr__(self) -> str:
        return f"DSN({self})"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise DSNError("DSN port is not a number") from None
    if not 0 < port < 65536:
        raise DSNError("DSN port is out of range")
    return port


def scrub(text: str, secrets: list[str] | tuple[str, ...] | set[str] | frozenset[str]) -> str:
    """Replace every known secret value (and its percent-encoding) in text."""
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
            enc = urllib.parse.quote(s, safe="")
            if enc != s:
                text = text.replace(enc, REDACTED)
    return text
