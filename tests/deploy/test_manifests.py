"""deploy/: every manifest validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict) and the
prometheus-operator CRD models (cloudcoil-models-prometheus-operator), the kustomize build checked, and the
sidecar's wiring (probes, security, Secret, ConfigMap, state dir, NetworkPolicy, PodMonitor) checked against
the Dockerfile and dbwatch itself.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as promop
from pydantic import BaseModel

from dbwatch import webconfig
from tests.helpers import REPO, run_cli

BASE = REPO / "deploy" / "base"
TLS_EXAMPLE = REPO / "deploy" / "examples" / "tls"
WEB_TLS = REPO / "deploy" / "components" / "web-tls"
# Native sidecars (an init container with restartPolicy: Always) need Kubernetes 1.29 (beta, on by default): the
# oldest version checked, and the newest whose schemas kubernetes-validate bundles (strict: no unknown fields).
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SIDECAR = REPO / "deploy" / "components" / "dbwatch-sidecar"
CRD_MODELS: dict[str, type[BaseModel]] = {"PodMonitor": promop.PodMonitor, "PrometheusRule": promop.PrometheusRule}
sys.path.insert(0, str(REPO / "scripts"))
import gen_deploy_rules  # noqa: E402 - scripts/ is not a package; the generator is imported as the test's oracle


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _files() -> dict[str, list[dict[str, Any]]]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return {name: _docs((BASE / name).read_text()) for name in kust["resources"]}


def _prune(value: Any) -> Any:
    """Drop empty containers so a model's round trip (which omits them) compares equal to the source."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def validate(doc: dict[str, Any]) -> None:
    """Validate one manifest: Kubernetes OpenAPI schemas for core kinds, the CRD models for the operator's."""
    model = CRD_MODELS.get(doc["kind"])
    if model is None:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        return
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    parsed = model.model_validate(doc)
    # The models ignore unknown fields; a round trip that loses something means a field the CRD does not have.
    again = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert _prune(again) == _prune(doc), f"{doc['kind']}: fields unknown to the CRD schema"


@pytest.mark.parametrize("name", sorted(_files()))
def test_manifest_is_valid(name: str) -> None:
    for doc in _files()[name]:
        validate(doc)


def test_validators_reject_what_they_should() -> None:
    """The validators are not vacuous: an unknown field and a wrong type fail in both kinds of check."""
    dep = _files()["deployment.yaml"][0]
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    (pm,) = _docs((SIDECAR / "podmonitor.yaml").read_text())
    for key, value in (("intervall", "15s"), ("interval", "soon")):
        bad = yaml.safe_load(yaml.safe_dump(pm))
        bad["spec"]["podMetricsEndpoints"][0][key] = value
        with pytest.raises((AssertionError, ValueError)):
            validate(bad)


def _kustomize(where: Path = BASE) -> list[dict[str, Any]]:
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if kustomize:
        argv = [kustomize, "build", str(where)]
    elif kubectl:
        argv = [kubectl, "kustomize", str(where)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return _docs(proc.stdout)


def test_kustomize_build_is_valid_and_wires_the_configmap() -> None:
    docs = _kustomize()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PodMonitor", "PrometheusRule"]  # no Secret
    for doc in docs:
        validate(doc)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["dbwatch-config"]["configMap"]["name"] == cm["metadata"]["name"]  # hashed name, rolled on change
    assert cm["metadata"]["name"].startswith("dbwatch-config-")


@functools.cache
def _rendered() -> list[dict[str, Any]]:
    return _kustomize()


def _pod() -> dict[str, Any]:
    """The example's pod template as rendered (the component added the sidecar)."""
    pod: dict[str, Any] = next(d for d in _rendered() if d["kind"] == "Deployment")["spec"]["template"]
    return pod


def _sidecar() -> dict[str, Any]:
    return next(c for c in _pod()["spec"]["initContainers"] if c["name"] == "dbwatch")


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("ENV "):
            for part in line[4:].split():
                if "=" in part:
                    k, v = part.split("=", 1)
                    env[k] = v
    return env


def test_sidecar_security_and_probes() -> None:
    """Non-root (the image's UID), read-only root, no capabilities; /healthz liveness and /readyz readiness."""
    pod_sc = _pod()["spec"]["securityContext"]
    c = _sidecar()
    sc = c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 65532
    assert sc["runAsUser"] == 65532  # also on the sidecar itself: the component may meet a pod without it
    assert "USER 65532:65532" in (REPO / "Dockerfile").read_text()
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert _pod()["spec"]["automountServiceAccountToken"] is False
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert port == 9839
    assert c["restartPolicy"] == "Always"  # a native sidecar
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    res = c["resources"]
    assert set(res) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(res["requests"])
    assert {"cpu", "memory"} <= set(res["limits"])


def test_sidecar_gets_url_from_secret_config_from_configmap_and_a_writable_state_dir() -> None:
    c = _sidecar()
    env = {e["name"]: e for e in c["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "app-database", "key": "DATABASE_URL"}
    assert "value" not in env["DATABASE_URL"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in _pod()["spec"]["volumes"]}
    assert vols["dbwatch-config"]["configMap"]["name"].startswith("dbwatch-config-")
    assert mounts["dbwatch-config"]["readOnly"] is True
    assert c["args"] == ["--config", mounts["dbwatch-config"]["mountPath"] + "/dbwatch.yaml"]
    state_dir = _dockerfile_env()["DBWATCH_STATE_DIR"]
    assert mounts["dbwatch-state"]["mountPath"] == state_dir
    assert "emptyDir" in vols["dbwatch-state"]
    assert mounts["app-logs"]["readOnly"] is True  # the app writes its logs, dbwatch only reads them
    app = next(x for x in _pod()["spec"]["containers"] if x["name"] == "app")
    assert any(m["name"] == "app-logs" and not m.get("readOnly") for m in app["volumeMounts"])
    assert "emptyDir" in vols["app-logs"]


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    """The config the ConfigMap carries is valid for this dbwatch, with DATABASE_URL as the Secret provides it."""
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    (name,) = kust["configMapGenerator"][0]["files"]
    url = "postgresql+asyncpg://app:CHANGE-ME@postgres:5432/app"
    proc = run_cli("check-config", str(BASE / name), env={"DATABASE_URL": url})
    assert proc.returncode == 0, proc.stderr
    assert "CHANGE-ME" not in proc.stdout


def test_network_policy_lets_only_prometheus_scrape() -> None:
    (np,) = _files()["networkpolicy.yaml"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= _pod()["metadata"]["labels"].items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    to_metrics = [r for r in np["spec"]["ingress"] if any(p["port"] in ("metrics", 9839) for p in r["ports"])]
    assert len(to_metrics) == 1
    (rule,) = to_metrics
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    for other in np["spec"]["ingress"]:
        if other is not rule:
            assert all(p["port"] not in ("metrics", 9839) for p in other["ports"])


def test_pod_monitor_scrapes_the_sidecar_port() -> None:
    (pm,) = [d for d in _rendered() if d["kind"] == "PodMonitor"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= _pod()["metadata"]["labels"].items()
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] in {p["name"] for p in _sidecar()["ports"]}
    assert ep["path"] == "/metrics"


def test_prometheus_rule_is_generated_from_config() -> None:
    """deploy's PrometheusRule is exactly what scripts/gen_deploy_rules.py makes from config/'s rule files."""
    committed = (BASE / "prometheusrule.yaml").read_text()
    assert committed == gen_deploy_rules.render(), "run .venv/bin/python scripts/gen_deploy_rules.py"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_deploy_rules.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert gen_deploy_rules.rule_files(), "config/ ships alert rule files; the PrometheusRule must carry them"
    (doc,) = _docs(committed)
    assert doc["spec"]["groups"]


def test_generator_picks_rule_files_and_skips_others(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "a.rules.yml").write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n")
    (cfg / "a.test.yml").write_text("rule_files: [a.rules.yml]\ntests: []\n")
    (cfg / "dbwatch.example.yaml").write_text("targets: []\n")
    assert [p.name for p in gen_deploy_rules.rule_files(cfg)] == ["a.rules.yml"]
    (doc,) = _docs(gen_deploy_rules.render(cfg))
    assert doc["spec"]["groups"] == [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0"}]}]
    validate(doc)
    assert os.path.basename(gen_deploy_rules.OUT) == "prometheusrule.yaml"


def test_tls_component_builds_valid_https_wiring() -> None:
    """deploy/examples/tls (base + components/web-tls): --web.config.file, mounted Secrets, https probes and scrape."""
    docs = _kustomize(TLS_EXAMPLE)
    for doc in docs:
        validate(doc)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = next(x for x in pod["initContainers"] if x["name"] == "dbwatch")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert c["args"] == ["--config", "/etc/dbwatch/dbwatch.yaml", "--web.config.file", "/etc/dbwatch/web/web.yml"]
    assert c["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert mounts["dbwatch-web-config"] == "/etc/dbwatch/web"
    assert mounts["dbwatch-tls"] == "/etc/dbwatch/tls"
    assert mounts["dbwatch-state"] == _dockerfile_env()["DBWATCH_STATE_DIR"]  # the base's mounts are kept
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    vols = {v["name"]: v for v in pod["volumes"]}
    web_secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("dbwatch-web"))
    assert vols["dbwatch-web-config"]["secret"]["secretName"] == web_secret["metadata"]["name"]
    (ep,) = next(d for d in docs if d["kind"] == "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert ep["scheme"] == "https"
    assert ep["tlsConfig"]["ca"]["secret"] == {"name": vols["dbwatch-tls"]["secret"]["secretName"], "key": "ca.crt"}


def test_tls_component_web_config_is_valid(tmp_path: Path) -> None:
    """web.yml loads with dbwatch's own loader once its certificate paths point at a real certificate."""
    import trustme

    raw = yaml.safe_load((WEB_TLS / "web.yml").read_text())
    cert = trustme.CA().issue_cert("dbwatch")
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    assert raw["tls_server_config"]["cert_file"].startswith("/etc/dbwatch/tls/")
    raw["tls_server_config"].update(cert_file=str(crt), key_file=str(key))
    web = webconfig.from_mapping(raw)
    assert web.tls is not None
    assert web.open_health_endpoints is True


USER_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop-api
  annotations:
    dbwatch.io/sidecar: "true"
spec:
  replicas: 20
  selector:
    matchLabels:
      app: shop-api
  template:
    metadata:
      labels:
        app: shop-api
    spec:
      initContainers:
        - name: migrate
          image: registry.example.com/shop:2.4.1
          command: ["alembic", "upgrade", "head"]
      containers:
        - name: api
          image: registry.example.com/shop:2.4.1
          ports:
            - name: web
              containerPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop-worker
spec:
  selector:
    matchLabels:
      app: shop-worker
  template:
    metadata:
      labels:
        app: shop-worker
    spec:
      containers:
        - name: worker
          image: registry.example.com/shop:2.4.1
"""


def test_component_adds_a_native_sidecar_to_someone_elses_deployment(tmp_path: Path) -> None:
    """The component onto a Deployment that is not the example: only the annotated one gets the sidecar, with its
    probes and config; the app's containers and init containers stay; no Secret, no NetworkPolicy appear."""
    (tmp_path / "deployment.yaml").write_text(USER_DEPLOYMENT)
    (tmp_path / "dbwatch.yaml").write_text((SIDECAR / "dbwatch.yaml").read_text())
    component = os.path.relpath(SIDECAR, tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [deployment.yaml]\n"
        f"components: [{component}]\n"
        "configMapGenerator:\n  - name: dbwatch-config\n    files: [dbwatch.yaml]\n"
    )
    docs = _kustomize(tmp_path)
    for doc in docs:
        validate(doc)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Deployment", "PodMonitor"]
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert by_name["shop-worker"] == _docs(USER_DEPLOYMENT)[1]  # not annotated: untouched
    api = by_name["shop-api"]
    pod = api["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["api"]
    assert pod["spec"]["containers"][0] == _docs(USER_DEPLOYMENT)[0]["spec"]["template"]["spec"]["containers"][0]
    inits = {c["name"]: c for c in pod["spec"]["initContainers"]}
    assert set(inits) == {"dbwatch", "migrate"}
    side = inits["dbwatch"]
    assert side["restartPolicy"] == "Always"
    assert "restartPolicy" not in inits["migrate"]
    assert {p: side[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["dbwatch-config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert api["spec"]["selector"] == {"matchLabels": {"app": "shop-api"}}  # the selector is the user's
    (pm,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in side["ports"]}
    proc = run_cli("check-config", str(tmp_path / "dbwatch.yaml"), env={"DATABASE_URL": "postgresql://a@db/app"})
    assert proc.returncode == 0, proc.stderr
