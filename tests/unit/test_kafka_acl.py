"""The ACL table (mlops.bus.acl): every topic of the catalog has exactly the writers and readers
DESIGN.md names, and the bindings give each principal that and nothing more."""

from __future__ import annotations

import pytest

from mlops.bus import acl
from mlops.event_catalog import DLQ_SUFFIX, all_events


def allowed(identity: str, operation: str, topic: str, prefix: str = "") -> bool:
    return acl.AclBinding(identity, "TOPIC", topic, "LITERAL", operation) in set(acl.bindings(prefix))


def test_every_event_of_the_catalog_has_one_writer_and_a_dead_letter_topic() -> None:
    access = acl.topic_access()
    for spec in all_events():
        exceptions = {s for s, events in acl.ALSO_WRITES.items() if spec.message in events}
        assert access[spec.topic].writers == {acl.WRITER[spec.message], *exceptions}, spec.topic
        assert spec.topic + DLQ_SUFFIX in access
    assert len(access) == 2 * len(all_events()) + 1  # and the outboxes' catch-all


def test_the_monitor_commits_the_data_sets_it_assembles_and_requests_retraining() -> None:
    assert allowed("monitor", "WRITE", "mlops.data.committed")
    assert allowed("monitor", "WRITE", "mlops.retrain.requested")
    assert allowed("registry", "WRITE", "mlops.retrain.requested"), (
        "people's requests, stated by the registry"
    )


def test_the_trainer_trains_on_the_registrys_records_not_on_raw_commits() -> None:
    assert allowed("trainer", "READ", "mlops.dataset.recorded")
    assert not allowed("trainer", "READ", "mlops.data.committed")
    assert not allowed("trainer", "WRITE", "mlops.data.committed")


def test_outboxes_dead_letter_what_they_publish_and_to_the_catch_all() -> None:
    assert allowed("evaluator", "WRITE", "mlops.model.evaluated.dlq")
    assert allowed("deployer", "WRITE", "mlops.deployments.desired.dlq")
    assert not allowed("evaluator", "WRITE", "mlops.deployments.desired.dlq")
    assert not allowed("upstream", "WRITE", "mlops.data.committed.dlq"), "upstream has no outbox here"
    writers = {
        b.identity
        for b in acl.bindings("p.")
        if b.resource_name == "p.mlops.outbox.dlq" and b.operation == "WRITE"
    }
    assert writers == set(acl.SERVICES)


def test_only_the_evaluator_writes_evaluations_and_only_the_deployer_desired_state() -> None:
    for identity in acl.IDENTITIES:
        assert allowed(identity, "WRITE", "mlops.model.evaluated") == (identity == "evaluator"), identity
        assert allowed(identity, "WRITE", "mlops.deployments.desired") == (identity == "deployer"), identity


def test_upstream_writes_its_two_intents_and_nothing_else() -> None:
    upstream = acl.bindings_of("upstream")
    written = {b.resource_name for b in upstream if b.operation == "WRITE"}
    assert written == {"mlops.data.committed", "mlops.groundtruth.logged"}
    assert {b.operation for b in upstream} == {"WRITE", "DESCRIBE", "CREATE"}, "upstream reads nothing"
    assert {b.resource_type for b in upstream} == {"TOPIC"}


def test_each_service_reads_what_it_subscribes_to_and_writes_its_dead_letters() -> None:
    assert allowed("evaluator", "READ", "mlops.model.trained")
    assert allowed("evaluator", "WRITE", "mlops.model.trained.dlq")
    assert not allowed("evaluator", "WRITE", "mlops.model.trained")
    assert not allowed("evaluator", "READ", "mlops.deployments.desired")
    assert allowed("monitor", "READ", "mlops.inference.logged")
    assert allowed("monitor", "WRITE", "mlops.groundtruth.logged.dlq")
    assert allowed("inference", "READ", "mlops.deployments.desired")
    assert allowed("inference", "WRITE", "mlops.deployments.desired.dlq")
    assert acl.topic_access()["mlops.data.committed"].readers == {"registry"}
    assert acl.topic_access()["mlops.dataset.recorded"].readers == {"trainer", "evaluator"}


def test_consumer_groups_are_prefixed_per_service_and_inference_has_none() -> None:
    groups = {
        (b.identity, b.resource_name, b.pattern_type) for b in acl.bindings() if b.resource_type == "GROUP"
    }
    expected = {(s, f"mlops-{s}", "PREFIXED") for s in acl.SERVICES if s != "inference"}
    assert groups == expected


def test_admin_is_a_super_user_with_no_bindings_and_unknown_identities_are_refused() -> None:
    assert acl.bindings_of("admin") == []
    with pytest.raises(ValueError, match="unknown Kafka identity 'evaluater'"):
        acl.bindings_of("evaluater")


def test_topic_prefix_applies_to_every_topic_binding_but_not_to_groups() -> None:
    prefixed = acl.bindings("bench.")
    assert all(b.resource_name.startswith("bench.mlops.") for b in prefixed if b.resource_type == "TOPIC")
    assert allowed("evaluator", "WRITE", "bench.mlops.model.evaluated", prefix="bench.")
    assert len(prefixed) == len(acl.bindings())


def test_an_event_without_a_writer_is_named(monkeypatch) -> None:
    writers = dict(acl.WRITER)
    removed = next(iter(writers))
    del writers[removed]
    monkeypatch.setattr(acl, "WRITER", writers)
    with pytest.raises(ValueError, match=removed.__name__):
        acl.topic_access()


def test_production_has_one_kafka_user_per_identity_with_the_tables_acls() -> None:
    from tests.unit.deploy_k8s_helpers import objects

    kafka_users = {d["metadata"]["name"]: d for d in objects("production") if d["kind"] == "KafkaUser"}
    assert set(kafka_users) == set(acl.IDENTITIES)
    assert not [d for d in objects("local") if d["kind"] == "KafkaUser"], "the local stack has its own users"
    patterns = {"literal": "LITERAL", "prefix": "PREFIXED"}
    for identity, resource in kafka_users.items():
        assert resource["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == "mlops"
        assert resource["spec"]["authentication"] == {"type": "scram-sha-512"}
        granted = {
            acl.AclBinding(
                identity,
                rule["resource"]["type"].upper(),
                rule["resource"]["name"],
                patterns[rule["resource"]["patternType"]],
                operation.upper(),
            )
            for rule in resource["spec"].get("authorization", {}).get("acls", [])
            for operation in rule["operations"]
        }
        assert granted == set(acl.bindings_of(identity)), identity
    assert "authorization" not in kafka_users["admin"]["spec"]


def _kafka_secure():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "infra/local/kafka_secure.py"
    spec = importlib.util.spec_from_file_location("mlops_local_kafka_secure", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_local_users_file_is_private_made_once_and_completed(tmp_path) -> None:
    secure = _kafka_secure()
    path = tmp_path / "pki" / "kafka-users.json"
    first = secure.ensure_users(path)
    assert set(first) == set(acl.IDENTITIES)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert len(set(first.values())) == len(first), "one password per identity"
    assert secure.ensure_users(path) == first
    partial = {k: v for k, v in first.items() if k != "monitor"}
    path.write_text(__import__("json").dumps(partial))
    again = secure.ensure_users(path)
    assert {k: again[k] for k in partial} == partial and again["monitor"]


def test_client_properties_name_the_secured_listener_and_the_ca(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLOPS_KAFKA_SECURE_BOOTSTRAP", raising=False)  # the default address
    secure = _kafka_secure()
    users = {identity: f"pw-{identity}" for identity in acl.IDENTITIES}
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    secure.write_clients(users, ca, tmp_path / "clients")
    text = (tmp_path / "clients" / "upstream.properties").read_text()
    lines = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert lines == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "upstream",
        "sasl.password": "pw-upstream",
        "ssl.ca.location": str((tmp_path / "clients" / "ca.pem").resolve()),
    }
    for name in ("ca.pem", "upstream.properties", "admin.properties"):
        assert ((tmp_path / "clients" / name).stat().st_mode & 0o777) == 0o600, name
