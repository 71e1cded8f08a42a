"""`dbwatch demo` has a login endpoint: its synthetic login probe (target demo-login, kind http_login) passes, and
the endpoint's access log feeds dbwatch_http_request_duration_seconds; the live figures show both."""

from __future__ import annotations

import re
import signal
import time
import urllib.request

from tests.helpers import demo_process, sample

PROBE = re.compile(r"demo-login +up=1 connect=[\d.]+ms tls=- ttfb=[\d.]+ms total=[\d.]+ms")
LATENCY = re.compile(r"demo-access +login latency \(access log\): POST /api/login n=[1-9]\d* mean=[\d.]+ms p95<=")


def test_demo_login_probe_and_access_log_latency() -> None:
    proc = demo_process("--listen", "127.0.0.1:0", "--duration", "60", "--interval", "1")
    assert proc.stdout is not None
    seen: list[str] = []
    metrics_url = ""
    deadline = time.monotonic() + 50
    try:
        for line in proc.stdout:
            seen.append(line)
            if found := re.search(r"metrics +(http://\S+/metrics)", line):
                metrics_url = found.group(1)
            text = "".join(seen)
            if PROBE.search(text) and LATENCY.search(text):
                break
            assert time.monotonic() < deadline, "".join(seen[-20:])
        assert metrics_url, "".join(seen)
        with urllib.request.urlopen(metrics_url, timeout=5) as r:  # noqa: S310 - the demo's loopback URL
            body = r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    text = "".join(seen)
    assert PROBE.search(text), text[-2000:]
    assert LATENCY.search(text), text[-2000:]
    assert "demo login endpoint http://127.0.0.1:" in text
    assert sample(body, "dbwatch_target_info", {"target": "demo-login", "kind": "http_login"}) == 1
    assert sample(body, "dbwatch_probe_up", {"target": "demo-login"}) == 1
    count = sample(
        body,
        "dbwatch_http_requests_total",
        {"source": "demo-access", "route": "/api/login", "method": "POST", "status_class": "2xx"},
    )
    assert count is not None
    assert count > 0
    assert "cluster removed" in rest
