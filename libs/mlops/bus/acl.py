"""Who may write and read each topic: one Kafka principal per identity, ACLs from the event catalog.

The catalog (the proto options) names the topics; this module names, for each event, the one
identity that writes it and the services that subscribe to it, as DESIGN.md's rooms table says.
From that table come the ACL bindings: the local stack applies them (infra/local/kafka_secure.py)
and Kubernetes gets them as Strimzi KafkaUsers (infra/k8s/topics.py), so both enforce one list.

What each kind of access grants, and why:
- a writer: WRITE, DESCRIBE and CREATE on its topic (publishers create what they write, the
  deployer creates its compacted topic up front; since Kafka 3.0 WRITE also allows idempotence),
  and the same on the topic's `.dlq` and on `mlops.outbox.dlq`, where its outbox relay parks a
  row it cannot publish;
- a reader: READ, DESCRIBE and CREATE on the topic (a consumer creates the topics it reads with
  their dead-letter twins when it starts before the writer), and the same as a writer on the
  topic's `.dlq`, where it puts what it cannot handle;
- a reader in a group: READ and DESCRIBE on the groups named `mlops-<service>` and longer (the
  monitor's inference log has a group of its own, `mlops-monitor.inference`). Inference reads
  desired state without a group, by assigning partitions, so it has no group ACL.
The admin identity is a super user of the broker and needs no ACL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import Message

from mlops.event_catalog import DLQ_SUFFIX, all_events, spec_for
from mlops.events.v1 import data_pb2, deployment_pb2, evaluation_pb2, model_pb2, monitoring_pb2, training_pb2

OUTBOX_DEAD_LETTERS = "mlops.outbox" + DLQ_SUFFIX
"""Where an outbox relay parks a row whose topic it cannot even name (mlops.bus.relay)."""

SERVICES = ("registry", "trainer", "evaluator", "deployer", "inference", "monitor")
UPSTREAM = "upstream"
"""Producers outside the platform (data pipelines, labelling): they write intents, nothing else."""
ADMIN = "admin"
"""Operators' identity, a super user of the broker: reads every topic, creates users and ACLs."""
CONSOLE = "console"
"""The web console (services/console): reads every topic and dead-letter topic for its live feed,
with no consumer group (each console process reads them whole); writes nothing (a dead letter is
replayed as the operators' identity, whoever runs the console configures it)."""
IDENTITIES = (*SERVICES, UPSTREAM, CONSOLE, ADMIN)

GROUPLESS_READERS = frozenset({"inference"})
"""Services that assign partitions themselves instead of joining a consumer group."""

WRITER: dict[type[Message], str] = {
    data_pb2.DataCommitted: UPSTREAM,
    monitoring_pb2.GroundTruthLogged: UPSTREAM,
    data_pb2.DatasetVersionRecorded: "registry",
    model_pb2.ModelRegistered: "registry",
    model_pb2.AliasChanged: "registry",
    training_pb2.TrainingStarted: "trainer",
    training_pb2.ModelTrained: "trainer",
    training_pb2.TrainingFailed: "trainer",
    evaluation_pb2.ModelEvaluated: "evaluator",
    deployment_pb2.DesiredState: "deployer",
    deployment_pb2.RolloutProgressed: "deployer",
    deployment_pb2.ModelDeployed: "deployer",
    deployment_pb2.ModelRolledBack: "deployer",
    monitoring_pb2.InferenceLogged: "inference",
    monitoring_pb2.DriftDetected: "monitor",
    monitoring_pb2.PerformanceDegraded: "monitor",
    training_pb2.RetrainRequested: "monitor",
}
"""The one identity that owns each event (each fact has one writer)."""

ALSO_WRITES: dict[str, tuple[type[Message], ...]] = {
    # a retrain on data assembled from the inference log and ground truth is stated as one intent:
    # the data, committed as any pipeline would, carrying the retrain it is for
    "monitor": (data_pb2.DataCommitted,),
    # people ask for a retrain through Registry.RequestRetrain, which states it for them
    # and a model trained elsewhere, registered with Registry.RegisterModel, is announced as trained
    # so that the evaluator gates it like the trainer's
    "registry": (training_pb2.RetrainRequested, training_pb2.ModelTrained),
}
"""The few services that also publish an event another identity owns, and why."""

READS: dict[str, tuple[type[Message], ...]] = {
    "registry": (data_pb2.DataCommitted, monitoring_pb2.DriftDetected, monitoring_pb2.PerformanceDegraded),
    # the registry's checked record, never the raw DataCommitted: the registry alone records data
    "trainer": (data_pb2.DatasetVersionRecorded, training_pb2.RetrainRequested),
    # data set records too: a new version re-evaluates the champion of a model trained outside
    "evaluator": (training_pb2.ModelTrained, data_pb2.DatasetVersionRecorded),
    "deployer": (evaluation_pb2.ModelEvaluated,),
    "inference": (deployment_pb2.DesiredState,),
    "monitor": (monitoring_pb2.InferenceLogged, monitoring_pb2.GroundTruthLogged),
}
"""What each service subscribes to (its composition root's `subscribe` calls and own readers)."""

ResourceType = Literal["TOPIC", "GROUP"]
PatternType = Literal["LITERAL", "PREFIXED"]
Operation = Literal["READ", "WRITE", "CREATE", "DESCRIBE"]

WRITE_OPERATIONS: tuple[Operation, ...] = ("WRITE", "DESCRIBE", "CREATE")
READ_OPERATIONS: tuple[Operation, ...] = ("READ", "DESCRIBE", "CREATE")
GROUP_OPERATIONS: tuple[Operation, ...] = ("READ", "DESCRIBE")
CONSOLE_OPERATIONS: tuple[Operation, ...] = ("READ", "DESCRIBE")


@dataclass(frozen=True, order=True)
class AclBinding:
    """One ALLOW rule for one principal, from any host."""

    identity: str
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    operation: Operation

    @property
    def principal(self) -> str:
        return f"User:{self.identity}"


@dataclass(frozen=True)
class TopicAccess:
    """Who writes and who reads one topic."""

    topic: str
    writers: frozenset[str]
    readers: frozenset[str]


def consumer_group_prefix(service: str) -> str:
    return f"mlops-{service}"


def topic_access(prefix: str = "") -> dict[str, TopicAccess]:
    """Every topic of the catalog and its dead-letter twin, with its writers and readers.

    `prefix` is BusSettings.topic_prefix, for environments that share one cluster.
    """
    missing = [spec.message.__name__ for spec in all_events() if spec.message not in WRITER]
    if missing:
        raise ValueError(f"events without a writer in mlops.bus.acl.WRITER: {', '.join(missing)}")
    readers: dict[str, set[str]] = {}
    for service, events in READS.items():
        for event in events:
            readers.setdefault(spec_for(event).topic, set()).add(service)
    also: dict[type[Message], set[str]] = {}
    for service, events in ALSO_WRITES.items():
        for event in events:
            also.setdefault(event, set()).add(service)
    access: dict[str, TopicAccess] = {}
    for spec in all_events():
        topic = prefix + spec.topic
        topic_readers = frozenset(readers.get(spec.topic, ()))
        writers = frozenset({WRITER[spec.message], *also.get(spec.message, ())})
        access[topic] = TopicAccess(topic, writers, topic_readers)
        # whoever reads a topic parks there what it cannot handle, a writer's outbox what it cannot
        # publish; operators read it (as admin)
        dead_letter_writers = topic_readers | (writers & frozenset(SERVICES))
        access[topic + DLQ_SUFFIX] = TopicAccess(topic + DLQ_SUFFIX, dead_letter_writers, frozenset())
    publishers = frozenset(w for a in list(access.values()) for w in a.writers if w in SERVICES)
    outbox = prefix + OUTBOX_DEAD_LETTERS
    access[outbox] = TopicAccess(outbox, publishers, frozenset())
    return access


def bindings(prefix: str = "") -> list[AclBinding]:
    """The ACL bindings of every identity but the admin (a super user), sorted and without repeats."""
    result: set[AclBinding] = set()
    for access in topic_access(prefix).values():
        for identity in access.writers:
            result |= {AclBinding(identity, "TOPIC", access.topic, "LITERAL", op) for op in WRITE_OPERATIONS}
        for identity in access.readers:
            result |= {AclBinding(identity, "TOPIC", access.topic, "LITERAL", op) for op in READ_OPERATIONS}
    for access in topic_access(prefix).values():
        result |= {AclBinding(CONSOLE, "TOPIC", access.topic, "LITERAL", op) for op in CONSOLE_OPERATIONS}
    for service in READS:
        if service not in GROUPLESS_READERS:
            group = consumer_group_prefix(service)
            result |= {AclBinding(service, "GROUP", group, "PREFIXED", op) for op in GROUP_OPERATIONS}
    return sorted(result)


def bindings_of(identity: str, prefix: str = "") -> list[AclBinding]:
    if identity not in IDENTITIES:
        raise ValueError(f"unknown Kafka identity {identity!r} (known: {', '.join(IDENTITIES)})")
    return [binding for binding in bindings(prefix) if binding.identity == identity]
