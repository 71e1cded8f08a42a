"""--web.config.file over real TLS sockets on 127.0.0.1, with a CA made here: basic auth, client certs, bad files."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import structlog.testing
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dbwatch.config import ConfigError
from dbwatch.webconfig import WebConfig, from_mapping, load
from tests.helpers import SENTINEL, SENTINEL_FORMS, eventually, run_cli, running

USER = "prometheus"


@dataclass
class CA:
    """A test CA with a server certificate for 127.0.0.1 and a client certificate, all PEM files in `dir`."""

    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def client_context(self, *, cert: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.path("ca.crt"))
        if cert:
            ctx.load_cert_chain(self.path(f"{cert}.crt"), self.path(f"{cert}.key"))
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(dir: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    (dir / f"{stem}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (dir / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _make_ca(dir: Path, stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"dbwatch test {stem}"))
        .issuer_name(_name(f"dbwatch test {stem}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .sign(key, hashes.SHA256())
    )
    _write(dir, stem, key, cert)
    return key, cert


def _issue(dir: Path, stem: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], *, server: bool) -> None:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    _write(dir, stem, key, builder.sign(ca[0], hashes.SHA256()))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """A CA, a server cert for 127.0.0.1, a client cert it signed, and a client cert from a stranger CA."""
    d = tmp_path_factory.mktemp("tlsca")
    root = _make_ca(d, "ca")
    _issue(d, "server", root, server=True)
    _issue(d, "client", root, server=False)
    stranger = _make_ca(d, "stranger-ca")
    _issue(d, "stranger", stranger, server=False)
    return CA(d)


@pytest.fixture(scope="module")
def pw_hash() -> str:
    """bcrypt hash of the sentinel password (cost 4 keeps the suite fast; production hashes use 10+)."""
    return bcrypt.hashpw(SENTINEL.encode(), bcrypt.gensalt(rounds=4)).decode()


def _tls(ca: CA, **extra: object) -> dict[str, object]:
    return {"cert_file": ca.path("server.crt"), "key_file": ca.path("server.key"), **extra}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _get(base: str, path: str, ctx: ssl.SSLContext | bool, auth: str | None = None) -> tuple[int, str, Any]:
    headers = {"Authorization": auth} if auth else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(base + path, ssl=ctx, headers=headers) as r,
    ):
        return r.status, await r.text(), r.headers


async def test_tls_and_basic_auth(ca: CA, pw_hash: str) -> None:
    """Right password over verified TLS passes; wrong password, unknown user, no header get a bare 401."""
    web = from_mapping({"tls_server_config": _tls(ca), "basic_auth_users": {USER: pw_hash}})
    async with running({"targets": []}, web) as d:
        assert d.base.startswith("https://")
        ctx = ca.client_context()
        status, body, _ = await _get(d.base, "/metrics", ctx, _basic(USER, SENTINEL))
        assert status == 200
        assert "dbwatch_build_info" in body
        for auth in (_basic(USER, "wrong"), _basic("nobody", SENTINEL), None):
            status, body, headers = await _get(d.base, "/metrics", ctx, auth)
            assert (status, body) == (401, "Unauthorized\n")
            assert headers["WWW-Authenticate"] == 'Basic realm="dbwatch"'
        # A malformed header is the same bare 401.
        for header in ("Basic %%%", "Bearer x", _basic(USER, SENTINEL).replace("Basic", "Digest")):
            assert (await _get(d.base, "/metrics", ctx, header))[:2] == (401, "Unauthorized\n")
        # Unknown paths are behind auth too (no route discovery without credentials).
        status, _, _ = await _get(d.base, "/nope", ctx)
        assert status == 401
        # Health endpoints stay open for the kubelet by default.
        for path in ("/healthz", "/readyz"):
            status, _, _ = await _get(d.base, path, ctx)
            assert status == 200


async def test_health_endpoints_can_be_closed(ca: CA, pw_hash: str) -> None:
    web = from_mapping({"basic_auth_users": {USER: pw_hash}, "dbwatch": {"open_health_endpoints": False}})
    async with running({"targets": []}, web) as d:
        assert d.base.startswith("http://")
        for path in ("/healthz", "/readyz", "/metrics"):
            status, _, _ = await _get(d.base, path, False)
            assert status == 401
            status, _, _ = await _get(d.base, path, False, _basic(USER, SENTINEL))
            assert status == 200


async def test_plain_http_to_tls_port_fails_cleanly(ca: CA, caplog: pytest.LogCaptureFixture) -> None:
    """Plain HTTP to the TLS port: the client gets a prompt error and no body; the server logs nothing and serves on."""
    caplog.set_level(logging.DEBUG)
    web = from_mapping({"tls_server_config": _tls(ca)})
    async with running({"targets": []}, web) as d:
        with pytest.raises(aiohttp.ClientError):
            await _get(f"http://127.0.0.1:{d.port}", "/metrics", False)
        reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(65536), 10)  # the server closes; it never answers in HTTP
        assert not got.startswith(b"HTTP/")
        assert b"dbwatch_" not in got
        writer.close()
        status, _, _ = await _get(d.base, "/metrics", ca.client_context())
        assert status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_client_certificate_auth(ca: CA) -> None:
    """RequireAndVerifyClientCert: a CA-signed client cert passes; none gets 401 (health open); a stranger's fails."""
    web = from_mapping(
        {"tls_server_config": _tls(ca, client_ca_file=ca.path("ca.crt"), client_auth_type="RequireAndVerifyClientCert")}
    )
    async with running({"targets": []}, web) as d:
        status, _, _ = await _get(d.base, "/metrics", ca.client_context(cert="client"))
        assert status == 200
        status, body, _ = await _get(d.base, "/metrics", ca.client_context())
        assert (status, body) == (401, "Unauthorized\n")
        status, _, _ = await _get(d.base, "/healthz", ca.client_context())
        assert status == 200  # the kubelet has no client certificate
        with pytest.raises(aiohttp.ClientError):
            await _get(d.base, "/metrics", ca.client_context(cert="stranger"))
    closed = from_mapping(
        {
            "tls_server_config": _tls(
                ca, client_ca_file=ca.path("ca.crt"), client_auth_type="RequireAndVerifyClientCert"
            ),
            "dbwatch": {"open_health_endpoints": False},
        }
    )
    async with running({"targets": []}, closed) as d:
        # Without open health endpoints the handshake itself demands the certificate.
        with pytest.raises(aiohttp.ClientError):
            await _get(d.base, "/healthz", ca.client_context())
        status, _, _ = await _get(d.base, "/healthz", ca.client_context(cert="client"))
        assert status == 200


async def test_tls_min_version_and_headers(ca: CA) -> None:
    web = from_mapping(
        {
            "tls_server_config": _tls(ca, min_version="TLS13"),
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        }
    )
    async with running({"targets": []}, web) as d:
        old = ca.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(aiohttp.ClientError):
            await _get(d.base, "/metrics", old)
        status, _, headers = await _get(d.base, "/metrics", ca.client_context())
        assert status == 200
        assert headers["X-Content-Type-Options"] == "nosniff"


async def _peer_serial(port: int, ctx: ssl.SSLContext) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def test_rotated_certificate_is_loaded_without_restart(ca: CA, tmp_path: Path) -> None:
    """Swap the certificate files as a Kubernetes Secret update does: new handshakes get the new certificate;
    a half-written (mismatched) pair is refused and the old certificate keeps serving."""
    import dataclasses
    import shutil

    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(ca.path(name), live / name)
    web = from_mapping(
        {"tls_server_config": {"cert_file": str(live / "server.crt"), "key_file": str(live / "server.key")}}
    )
    web = dataclasses.replace(web, reload_interval=0.1)
    root = (
        serialization.load_pem_private_key((ca.dir / "ca.key").read_bytes(), None),
        x509.load_pem_x509_certificate((ca.dir / "ca.crt").read_bytes()),
    )
    with structlog.testing.capture_logs() as events:
        await _rotate(web, ca, tmp_path, live, root)
    names = [e["event"] for e in events if e["event"].startswith("web_tls")]
    assert names == ["web_tls_reload_failed", "web_tls_reloaded"]


async def _rotate(web: WebConfig, ca: CA, tmp_path: Path, live: Path, root: Any) -> None:
    import os
    import shutil

    async with running({"targets": []}, web) as d:
        first = await _peer_serial(d.port, ca.client_context())
        # A mismatched pair (new certificate, old key) must not replace the working one.
        _issue(tmp_path, "next", root, server=True)
        shutil.copy(tmp_path / "next.crt", live / "server.crt.tmp")
        os.replace(live / "server.crt.tmp", live / "server.crt")
        await asyncio.sleep(0.5)
        assert await _peer_serial(d.port, ca.client_context()) == first
        shutil.copy(tmp_path / "next.key", live / "server.key.tmp")
        os.replace(live / "server.key.tmp", live / "server.key")
        want = x509.load_pem_x509_certificate((tmp_path / "next.crt").read_bytes()).serial_number
        await eventually(lambda: _peer_serial(d.port, ca.client_context()), timeout=5)
        assert await eventually(lambda: _serial_is(d.port, ca.client_context(), want), timeout=5)


async def _serial_is(port: int, ctx: ssl.SSLContext, want: int) -> bool:
    return await _peer_serial(port, ctx) == want


def _bad_cases(ca: CA, pw_hash: str) -> list[tuple[dict[str, Any], str]]:
    return [
        ({"tls_config": {}}, "tls_config: unknown key"),
        ({"tls_server_config": {"cert_file": ca.path("server.crt")}}, "tls_server_config.key_file: missing"),
        ({"tls_server_config": _tls(ca, cert_file="/nonexistent.crt")}, "tls_server_config.cert_file: cannot read"),
        (
            {"tls_server_config": _tls(ca, key_file=ca.path("client.key"))},
            "tls_server_config.cert_file: cannot load certificate and key",
        ),
        ({"tls_server_config": _tls(ca, client_auth_type="RequireAnyClientCert")}, "client_auth_type: RequireAny"),
        ({"tls_server_config": _tls(ca, client_auth_type="Sometimes")}, "tls_server_config.client_auth_type: must be"),
        ({"tls_server_config": _tls(ca, client_auth_type="VerifyClientCertIfGiven")}, "client_ca_file: missing"),
        ({"tls_server_config": _tls(ca, client_ca_file=ca.path("ca.crt"))}, "client_ca_file: given without"),
        ({"tls_server_config": _tls(ca, min_version="SSL3")}, "tls_server_config.min_version: must be one of"),
        ({"tls_server_config": _tls(ca, cipher_suites=["X"])}, "tls_server_config.cipher_suites: exporter-toolkit"),
        ({"basic_auth_users": {USER: SENTINEL}}, f"basic_auth_users.{USER}: expected a bcrypt hash"),
        ({"basic_auth_users": {"a:b": pw_hash}}, "basic_auth_users: a user name"),
        ({"basic_auth_users": [USER]}, "basic_auth_users: expected a mapping"),
        ({"http_server_config": {"headers": {"Bad Header": "x"}}}, "http_server_config.headers.Bad Header"),
        ({"dbwatch": {"open_health_endpoints": "yes"}}, "dbwatch.open_health_endpoints: expected true or false"),
    ]


def test_bad_web_configs_name_the_key(ca: CA, pw_hash: str) -> None:
    """Every bad web config is a ConfigError naming its key; none echoes a value (a plaintext password here)."""
    for raw, want in _bad_cases(ca, pw_hash):
        with pytest.raises(ConfigError) as info:
            from_mapping(raw)
        assert want in str(info.value), (raw, str(info.value))
        assert not any(f in str(info.value) for f in SENTINEL_FORMS)


def test_run_exits_2_on_bad_web_config(ca: CA, tmp_path: Path) -> None:
    """`dbwatch run --web.config.file` with a plaintext password where a hash belongs: exit 2, key named, no secret."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: 127.0.0.1:0\ntargets: []\n")
    bad = tmp_path / "web.yml"
    bad.write_text(yaml.safe_dump({"basic_auth_users": {USER: SENTINEL}}))
    for cmd in (["run", "--config", str(cfg)], ["check-config", str(cfg)]):
        proc = run_cli(*cmd, "--web.config.file", str(bad))
        assert proc.returncode == 2
        assert f"{bad}: basic_auth_users.{USER}: expected a bcrypt hash" in proc.stderr
        assert not any(f in proc.stdout + proc.stderr for f in SENTINEL_FORMS)
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump({"tls_server_config": _tls(ca)}))
    proc = run_cli("check-config", str(cfg), "--web.config.file", str(good))
    assert proc.returncode == 0
    assert "web config ok" in proc.stdout


def test_load_reads_a_file_and_an_empty_one_means_plain_http(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert load(empty) == WebConfig()
    assert WebConfig().ssl_context() is None
