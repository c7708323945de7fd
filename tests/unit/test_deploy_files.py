"""The Dockerfile, docker-compose.yml, the Prometheus configs and the Grafana dashboard, checked
offline: each service runs the command infra/local/services.sh runs, the compose file is valid
against the Compose specification's schema, hadolint and promtool accept what they check."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from tests.unit.test_deploy_tools import (
    DASHBOARD,
    HTTP_PORTS,
    REPO,
    SERVICES,
    cached,
    dashboard_metrics,
    dashboard_panels,
    owner_of,
    run,
    service_exists,
    tool,
)

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def services_sh() -> dict[str, int]:
    """name -> gRPC port, from the table in infra/local/services.sh."""
    text = (REPO / "infra/local/services.sh").read_text()
    return {m[0]: int(m[1]) for m in re.findall(r'"(\w+) \$\{MLOPS_\w+_GRPC_PORT:-(\d+)\}"', text)}


def services_sh_http() -> dict[str, int]:
    """name -> HTTP port, from `http_port_of` in infra/local/services.sh."""
    text = (REPO / "infra/local/services.sh").read_text()
    return {m[0]: int(m[1]) for m in re.findall(r'(\w+)\) echo "\$\{MLOPS_\w+_HTTP_PORT:-(\d+)\}"', text)}


def test_services_sh_table_matches_the_port_table() -> None:
    assert services_sh() == {name: ports[0] for name, ports in SERVICES.items()}
    assert services_sh_http() == HTTP_PORTS


def test_http_ports_are_the_services_own_defaults() -> None:
    from services.inference.settings import InferenceSettings

    # a service started with no variable set listens where services.sh, compose and k8s look
    assert InferenceSettings.model_fields["http_port"].default == HTTP_PORTS["inference"]
    assert set(HTTP_PORTS) <= set(SERVICES)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2, stages
    final = len(instructions) - 1 - [op for op, _ in instructions][::-1].index("FROM")
    runtime = instructions[final:]
    users = [args for op, args in runtime if op == "USER"]
    assert users, "the runtime stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    copies = [args for op, args in runtime if op == "COPY"]
    assert copies and all("--from=" in args for args in copies), (
        "the runtime stage copies only from the build stage"
    )
    cmd = json.loads(next(args for op, args in reversed(runtime) if op == "CMD"))
    assert cmd[:2] == ["python", "-m"] and cmd[2].startswith("services."), cmd


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    copied: set[str] = set()
    for op, args in dockerfile_instructions():
        if op == "COPY" and "--from=" not in args:
            copied.update(part.rstrip("/") for part in args.split()[:-1])
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert copied <= allowed, f"COPY of {sorted(copied - allowed)} is excluded by .dockerignore"
    for secret in (".env", ".stack", ".venv", ".git"):
        assert secret not in allowed


def test_hadolint_accepts_the_dockerfile() -> None:
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(cached("compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose())


def test_compose_schema_check_can_fail() -> None:
    schema = json.loads(cached("compose-spec.json").read_text())
    broken = compose()
    broken["services"]["registry"]["healthcheck"]["retries"] = "many"
    broken["services"]["registry"]["depends_on"]["kafka"]["condition"] = "service_ready"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_compose_runs_every_service_with_the_command_services_sh_runs() -> None:
    services = compose()["services"]
    for name, grpc_port in services_sh().items():
        if not service_exists(name):
            continue
        assert name in services, f"services/{name} exists but docker-compose.yml does not run it"
        spec = services[name]
        assert spec["command"] == ["python", "-m", f"services.{name}"]
        assert spec["build"] == "."
        probe = spec["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "python", "-c"] and "grpc_health" in probe[3], probe
        assert probe[4] == str(grpc_port)
        if name in HTTP_PORTS:
            http = HTTP_PORTS[name]
            assert f"127.0.0.1:{http}:{http}" in spec["ports"], f"{name} publishes no port {http}"
            assert f"MLOPS_{name.upper()}_HTTP_PORT" not in spec["environment"], "the default is the port"
        for dependency, condition in spec["depends_on"].items():
            assert condition["condition"] in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            )
            if dependency in ("kafka", "postgres", "registry", "monitor"):
                assert condition["condition"] == "service_healthy", (name, dependency)


def test_compose_environment_uses_the_services_real_settings() -> None:
    from mlops.settings import (
        ArtifactSettings,
        DatabaseSettings,
        GrpcClientSettings,
        GrpcServerSettings,
        KafkaSettings,
        TelemetrySettings,
    )

    classes = (  # the longer prefix first: MLOPS_GRPC_CLIENT_ before MLOPS_GRPC_
        (KafkaSettings, "MLOPS_KAFKA_"),
        (DatabaseSettings, "MLOPS_DATABASE_"),
        (ArtifactSettings, "MLOPS_ARTIFACT_"),
        (TelemetrySettings, "MLOPS_TELEMETRY_"),
        (GrpcClientSettings, "MLOPS_GRPC_CLIENT_"),
        (GrpcServerSettings, "MLOPS_GRPC_"),
    )
    services = compose()["services"]
    for name in [n for n in services_sh() if service_exists(n)]:
        env = services[name]["environment"]
        for key in env:
            assert key.startswith(("MLOPS_", "OTEL_", "AWS_")), key
        for key in env:
            prefix = next((p for _, p in classes if key.startswith(p)), None)
            if prefix is None:
                continue
            settings = next(s for s, p in classes if p == prefix)
            field = key.removeprefix(prefix).lower()
            assert field in settings.model_fields, f"{name}: {key} is not a field of {settings.__name__}"


def test_compose_dependencies_name_services_that_exist() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        for dependency in spec.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}, which the file does not define"
            assert dependency != name


def test_compose_secrets_have_no_default() -> None:
    text = COMPOSE.read_text()
    for variable in (
        "MLOPS_PG_PASSWORD",
        "MLOPS_S3_ACCESS_KEY",
        "MLOPS_S3_SECRET_KEY",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        uses = re.findall(r"\$\{" + variable + r"([^}]*)\}", text)
        assert uses, variable
        assert all(use.startswith(":?") for use in uses), (
            f"{variable} must be required (${{{variable}:?...}})"
        )
        assert re.search(rf"^{variable}=", ENV_EXAMPLE.read_text(), re.M), f".env.example lacks {variable}"


def test_env_example_sets_every_variable_the_compose_file_requires() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = set(re.findall(r"^(\w+)=", ENV_EXAMPLE.read_text(), re.M))
    assert required <= example, sorted(required - example)


def test_prometheus_configs_scrape_every_service_and_pass_promtool() -> None:
    for config in ("infra/prometheus/prometheus.yml", "infra/prometheus/local.yml"):
        result = run(tool("promtool"), "check", "config", config)
        assert result.returncode == 0, result.stdout + result.stderr
        targets = {
            group["labels"]["service"]: group["targets"][0]
            for job in yaml.safe_load((REPO / config).read_text())["scrape_configs"]
            for group in job["static_configs"]
        }
        for name, (_, metrics_port) in SERVICES.items():
            assert targets[name].endswith(f":{metrics_port}"), (config, name, targets.get(name))


def test_every_dashboard_query_parses_as_promql(tmp_path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": target["expr"]}
                    for panel in dashboard_panels()
                    for target in panel["targets"]
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[1m]"}]}]})
    )
    assert run(tool("promtool"), "check", "rules", path).returncode != 0


def test_dashboard_covers_loop_serving_rollouts_and_drift() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"].split(":")[0] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Loop", "Serving", "Rollouts", "Drift and live quality"]
    metrics = dashboard_metrics()
    for needed in (
        "mlops_bus_published_total",
        "mlops_bus_consumer_lag",
        "mlops_bus_consumed_total",
        "mlops_inference_requests_total",
        "mlops_inference_request_seconds",
        "mlops_inference_batch_size",
        "mlops_rollout_traffic_percent",
        "mlops_rollout_step",
        "mlops_rollbacks_total",
        "mlops_drift_score",
        "mlops_drift_alarms_total",
    ):
        assert needed in metrics, needed
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "mlops-prometheus", panel["title"]


def test_dashboard_metrics_are_declared_by_the_services_that_own_them() -> None:
    sources = {
        name: "\n".join(p.read_text() for p in (REPO / "services" / name).rglob("*.py"))
        for name in SERVICES
        if service_exists(name)
    }
    sources["bus"] = (REPO / "libs/mlops/bus/metrics.py").read_text()
    for metric in dashboard_metrics():
        owner = owner_of(metric) or "bus"
        if owner in sources:
            assert f'"{metric}"' in sources[owner], f"{metric} is not declared in {owner}'s code"


def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    datasource = yaml.safe_load((REPO / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "mlops-prometheus"
    provider = yaml.safe_load((REPO / "infra/grafana/provisioning/dashboards/mlops.yml").read_text())
    mounts = compose()["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert f"./infra/grafana/dashboards:{path}:ro" in mounts
