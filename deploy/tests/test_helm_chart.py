"""The Helm chart in deploy/helm/switchyard, rendered and checked against Kubernetes schemas.

`helm template` cannot run here (no helm binary from the reachable registries), so the
templates are rendered by the small Go-template subset in `gotemplate.py` and every object is
validated offline with `kubernetes-validate` (strict: unknown fields fail). The checks below
are what the gateway needs from its deployment: probes on /ready and /health, the config
mounted where SWITCHYARD_CONFIG points, secrets only by reference, the migration hook, an HPA
that targets the Deployment, a Service whose selector matches the pods.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gotemplate import TemplateError, render

CHART = Path(__file__).resolve().parents[1] / "helm" / "switchyard"
K8S_VERSION = "1.30.0"
RELEASE = "sy"


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def render_chart(vals: dict) -> dict[str, dict]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    objects: dict[str, dict] = {}
    for path in sorted((CHART / "templates").glob("*.yaml")):
        text = render(path.read_text(), vals, RELEASE, chart)
        for doc in yaml.safe_load_all(text):
            if doc:
                objects[doc["kind"]] = doc
    return objects


def validate(objects: dict[str, dict]) -> None:
    for kind, obj in objects.items():
        if kind == "ServiceMonitor":
            continue  # a CRD: no schema in kubernetes-validate; checked by hand below
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def container(objects: dict[str, dict]) -> dict:
    return objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_default_values_render_valid_objects():
    objects = render_chart(values())
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "Job"}
    validate(objects)


def test_probes_config_and_secret_references():
    objects = render_chart(values())
    c = container(objects)
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e for e in c["env"]}
    assert env["SWITCHYARD_CONFIG"]["value"] == "/etc/switchyard/switchyard.toml"
    assert env["SWITCHYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "switchyard-database"
    assert c["envFrom"] == [{"secretRef": {"name": "switchyard-providers"}}]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] == "/etc/switchyard"
    config = tomllib.loads(objects["ConfigMap"]["data"]["switchyard.toml"])
    assert config["server"]["listen"] == "0.0.0.0:8080"
    assert config["database"]["spill_path"].startswith(mounts["data"])
    # Provider keys are named, never given.
    assert all("api_key" not in p for p in config["providers"].values())
    assert all(p["api_key_env"] for p in config["providers"].values())
    text = "\n".join(p.read_text() for p in (CHART / "templates").glob("*.yaml"))
    assert "kind: Secret\n" not in text and "stringData" not in text


def test_service_hpa_and_migration_job_fit_the_deployment():
    objects = render_chart(values())
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = objects["Service"]["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    job = objects["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    assert job_container["args"] == ["migrate"]
    assert job_container["image"] == container(objects)["image"]
    # The job's pods must not be picked up by the Service.
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_flags_turn_parts_on_and_off():
    vals = copy.deepcopy(values())
    vals["serviceMonitor"]["enabled"] = True
    vals["serviceMonitor"]["labels"] = {"release": "prometheus"}
    vals["autoscaling"]["enabled"] = False
    vals["migrations"]["enabled"] = False
    vals["masterKey"]["secretName"] = "switchyard-master"
    vals["extraEnv"] = [{"name": "RUST_LOG", "value": "debug"}]
    objects = render_chart(vals)
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "ServiceMonitor"}
    validate(objects)
    assert objects["Deployment"]["spec"]["replicas"] == vals["replicaCount"]
    env = {e["name"]: e for e in container(objects)["env"]}
    assert env["SWITCHYARD_MASTER_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "switchyard-master"
    assert env["RUST_LOG"]["value"] == "debug"
    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "30s"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= objects["Service"]["metadata"]["labels"].items()
    assert any(p["name"] == "http" for p in objects["Service"]["spec"]["ports"])


def test_learning_cronjob_shares_the_checkpoint_with_the_gateway():
    vals = copy.deepcopy(values())
    vals["learning"]["enabled"] = True
    vals["config"] = vals["config"].replace(
        'checkpoint = "/opt/switchyard/models/selector/default"',
        f'checkpoint = "{vals["learning"]["checkpointPath"]}"',
    )
    objects = render_chart(vals)
    assert "CronJob" in objects
    validate(objects)
    cron = objects["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["schedule"] == vals["learning"]["schedule"]
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    job = pod["containers"][0]
    assert job["args"][0] == "learn"
    args = dict(zip(job["args"][1::2], job["args"][2::2]))
    assert args["--active"] == vals["learning"]["checkpointPath"]
    assert args["--min-rows"] == str(vals["learning"]["minRows"])
    assert job["image"] == container(objects)["image"]
    env = {e["name"]: e for e in job["env"]}
    assert env["SWITCHYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "switchyard-database"
    # The job writes the checkpoint where the gateway reads it (read-only there).
    job_mounts = {m["name"]: m for m in job["volumeMounts"]}
    gateway_mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    assert job_mounts["checkpoints"]["mountPath"] == gateway_mounts["checkpoints"]["mountPath"]
    assert gateway_mounts["checkpoints"]["readOnly"] is True and not job_mounts["checkpoints"].get("readOnly")
    claims = lambda spec: {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims(pod)["checkpoints"] == claims(objects["Deployment"]["spec"]["template"]["spec"])["checkpoints"]
    config = tomllib.loads(objects["ConfigMap"]["data"]["switchyard.toml"])
    assert config["router"]["checkpoint"] == args["--active"]
    assert args["--active"].startswith(job_mounts["checkpoints"]["mountPath"] + "/")
    # Off by default: no CronJob, no claim on the gateway.
    default = render_chart(values())
    assert "CronJob" not in default
    assert all(v["name"] != "checkpoints" for v in default["Deployment"]["spec"]["template"]["spec"]["volumes"])


def test_schema_validation_catches_a_broken_object():
    """The validator is not a rubber stamp: a bad field type is refused."""
    objects = render_chart(values())
    broken = copy.deepcopy(objects["Service"])
    broken["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    unknown = copy.deepcopy(objects["Deployment"])
    unknown["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


def test_renderer_refuses_what_it_does_not_know():
    chart = {"name": "x", "version": "0", "appVersion": "0"}
    with pytest.raises(TemplateError):
        render('{{ include "x" . }}', {}, "r", chart)
    with pytest.raises(TemplateError):
        render("{{ .Values.missing }}", {}, "r", chart)
    assert render("a:{{- if .Values.on }} {{ .Values.v | quote }}{{- end }}", {"on": True, "v": 1}, "r", chart) == 'a: "1"'
