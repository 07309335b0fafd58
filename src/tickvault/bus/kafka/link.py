"""Kafka plumbing for :mod:`tickvault.bus.kafka.bus`: URL options, client configs, error
translation, topic creation and retention, and :class:`TopicTable` (a small topic read in
full, for dead letters and the group registry).

URL: ``kafka://host:port[,host:port...]/topic-prefix?option=value&...``

=========================  =========  =========================================================
option                     default    meaning
=========================  =========  =========================================================
``retention``              ``7d``     ``retention.ms`` of stream topics (``72h``, ``7d``, ms)
``retention_bytes``        ``-1``     ``retention.bytes`` per partition of stream topics (-1: no
                                      size limit, only ``retention`` removes records)
``min_insync``             ``2``      ``min.insync.replicas`` of every topic tickvault creates
                                      (capped at its replication factor)
``partitions``             ``6``      partitions of a stream topic created by tickvault
``replication``            ``3``      replication factor (capped at the number of brokers)
``session_timeout_ms``     ``10000``  consumer group session timeout (dead member detection)
``timeout_ms``             ``30000``  how long an append or a commit may take before failing
``join_timeout_ms``        ``60000``  how long a first ``read`` waits for the group to assign
``group_protocol``         classic    ``classic`` (any broker) or ``consumer`` (KIP-848, Kafka
                                      4.0+: incremental assignment, no join barrier)
=========================  =========  =========================================================
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tickvault.core.errors import BackendNotAvailable, BusError, BusUnavailable

log = logging.getLogger("tickvault.bus.kafka")

RESERVED = ("dlq", "groups")
"""Topic suffixes the bus uses itself: ``<prefix>.dlq`` and ``<prefix>.groups``."""

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def kafka() -> Any:
    """The ``confluent_kafka`` module, imported on first use."""
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendNotAvailable(
            "the Kafka bus needs confluent-kafka: install tickvault[kafka]"
        ) from exc
    return confluent_kafka


def parse_duration_ms(text: str) -> int:
    """``"7d"`` → 604800000; a bare number is milliseconds; ``-1`` means keep forever."""
    text = text.strip().lower()
    if text == "-1":
        return -1
    m = _DURATION_RE.match(text)
    if m is None:
        raise BusError(f"invalid duration {text!r}: use e.g. 604800000, 168h or 7d")
    return int(m.group(1)) * _UNIT_MS[m.group(2) or "ms"]


@dataclass(frozen=True)
class KafkaOptions:
    bootstrap: str
    prefix: str = "tickvault"
    retention_ms: int = 7 * 86_400_000
    retention_bytes: int = -1
    min_insync: int = 2
    partitions: int = 6
    replication: int = 3
    session_timeout_ms: int = 10_000
    timeout_ms: int = 30_000
    join_timeout_ms: int = 60_000
    group_protocol: str = "classic"

    @classmethod
    def from_url(cls, url: str) -> KafkaOptions:
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc:
            raise BusError(f"Kafka bus URL must look like kafka://host:port/prefix: {url!r}")
        prefix = parts.path.strip("/") or "tickvault"
        if not _TOPIC_RE.match(prefix):
            raise BusError(f"invalid Kafka topic prefix {prefix!r} (letters, digits, . _ -)")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        known = {
            "retention",
            "retention_bytes",
            "min_insync",
            "partitions",
            "replication",
            "session_timeout_ms",
            "timeout_ms",
            "join_timeout_ms",
            "group_protocol",
        }
        unknown = sorted(set(q) - known)
        if unknown:
            raise BusError(f"unknown Kafka bus option(s): {', '.join(unknown)}")
        try:
            options = cls(
                bootstrap=parts.netloc,
                prefix=prefix,
                retention_ms=parse_duration_ms(q.get("retention", "7d")),
                retention_bytes=int(q.get("retention_bytes", -1)),
                min_insync=int(q.get("min_insync", 2)),
                partitions=int(q.get("partitions", 6)),
                replication=int(q.get("replication", 3)),
                session_timeout_ms=int(q.get("session_timeout_ms", 10_000)),
                timeout_ms=int(q.get("timeout_ms", 30_000)),
                join_timeout_ms=int(q.get("join_timeout_ms", 60_000)),
                group_protocol=q.get("group_protocol", "classic"),
            )
        except ValueError as exc:
            raise BusError(f"invalid Kafka bus option in {url!r}: {exc}") from None
        if options.min_insync < 1 or options.replication < 1 or options.partitions < 1:
            raise BusError(f"min_insync, replication and partitions must be >= 1: {url!r}")
        if options.retention_bytes < -1 or options.retention_bytes == 0:
            raise BusError(f"retention_bytes must be -1 (no limit) or positive: {url!r}")
        if options.group_protocol not in ("classic", "consumer"):
            raise BusError(f"group_protocol must be classic or consumer: {url!r}")
        return options

    def topic(self, stream: str) -> str:
        if stream in RESERVED or not _TOPIC_RE.match(stream):
            raise BusError(f"invalid stream name {stream!r} for the Kafka bus")
        return f"{self.prefix}.{stream}"

    def stream_of(self, topic: str) -> str | None:
        head = self.prefix + "."
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return None if name in RESERVED or "." in name else name

    @property
    def dlq_topic(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def groups_topic(self) -> str:
        return f"{self.prefix}.groups"

    def base_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": log, "log_level": 4}

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        return {
            **self.base_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": self.timeout_ms,
            **extra,
        }

    def group_id(self, group: str) -> str:
        """Kafka group ids are cluster-wide: ``<prefix>.<group>`` keeps deployments apart."""
        return f"{self.prefix}.{group}"

    def consumer_config(self, group: str, **extra: Any) -> dict[str, Any]:
        """Config of a consumer in tickvault group ``group`` (see :meth:`group_id`)."""
        return {
            **self.base_config(),
            "group.id": self.group_id(group),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,
            "group.protocol": self.group_protocol,
            # Under KIP-848 the broker owns session timeouts and assignment.
            **(
                {
                    "session.timeout.ms": self.session_timeout_ms,
                    "heartbeat.interval.ms": max(100, self.session_timeout_ms // 10),
                }
                if self.group_protocol == "classic"
                else {}
            ),
            **extra,
        }


def translate(exc: BaseException, what: str) -> BusError:
    """A librdkafka error as a tickvault error: retriable/transport → BusUnavailable."""
    ck = kafka()
    err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
    if err is not None and (err.retriable() or err.code() in _TRANSPORT_CODES(ck)):
        return BusUnavailable(f"Kafka bus: {what}: {err.str()}")
    if isinstance(exc, TimeoutError | ck.KafkaException):
        return BusUnavailable(f"Kafka bus: {what}: {exc}")
    return BusError(f"Kafka bus: {what}: {exc}")


def _TRANSPORT_CODES(ck: Any) -> set[int]:
    e = ck.KafkaError
    return {
        e._TRANSPORT,
        e._ALL_BROKERS_DOWN,
        e._TIMED_OUT,
        e._MSG_TIMED_OUT,
        e.REQUEST_TIMED_OUT,
        e.REBALANCE_IN_PROGRESS,
        e.NOT_COORDINATOR,
        e.COORDINATOR_NOT_AVAILABLE,
    }


class Topics:
    """Creates topics and reads their retention.

    A cluster that reports no controller among its brokers (librdkafka's mock cluster)
    has no admin API for topics: topics are then created by the broker's auto-creation
    (its default partition count) and retention is reported as configured, not confirmed.
    """

    def __init__(self, options: KafkaOptions, producer: Any) -> None:
        self.options = options
        self.producer = producer
        self._admin: Any = None
        self._known: set[str] = set()
        self._has_admin: bool | None = None

    def admin_api(self) -> bool:
        if self._has_admin is None:
            md = self.producer.list_topics(timeout=self.options.timeout_ms / 1000)
            self._has_admin = md.controller_id in md.brokers
        return self._has_admin

    def _admin_client(self) -> Any:
        if self._admin is None:
            self._admin = kafka().admin.AdminClient(self.options.base_config())
        return self._admin

    def ensure(self, topic: str, config: dict[str, str], partitions: int) -> None:
        """Create ``topic`` unless it exists (blocking; call from a worker thread)."""
        if topic in self._known:
            return
        ck = kafka()
        timeout = self.options.timeout_ms / 1000
        md = self.producer.list_topics(timeout=timeout)
        # Without an admin API (the mock cluster) the metadata request below creates it.
        if topic not in md.topics and self.admin_api():
            replicas = max(1, min(self.options.replication, len(md.brokers)))
            config = {**config, "min.insync.replicas": str(min(self.options.min_insync, replicas))}
            new = ck.admin.NewTopic(topic, partitions, replicas, config=config)
            fut = self._admin_client().create_topics([new], request_timeout=timeout)[topic]
            try:
                fut.result(timeout=timeout + 5)
            except ck.KafkaException as exc:
                if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        deadline = time.monotonic() + timeout
        while True:
            t = self.producer.list_topics(topic=topic, timeout=timeout).topics.get(topic)
            if t is not None and t.error is None and t.partitions:
                break
            if time.monotonic() > deadline:
                raise BusUnavailable(f"Kafka bus: topic {topic} did not appear")
            time.sleep(0.05)
        self._known.add(topic)

    def describe(self, topic: str) -> dict[str, str]:
        """The broker's effective configuration of ``topic`` (name → value); blocking."""
        ck = kafka()
        res = ck.admin.ConfigResource(ck.admin.ResourceType.TOPIC, topic)
        timeout = self.options.timeout_ms / 1000
        fut = self._admin_client().describe_configs([res], request_timeout=timeout)[res]
        return {k: v.value for k, v in fut.result(timeout=timeout + 5).items()}

    def retention(self, topic: str) -> dict[str, Any]:
        """``{"retention_ms", "retention_bytes", "min_insync_replicas", "source"}`` of
        ``topic``: as the broker reports them, else (no admin API) as configured."""
        if self.admin_api():
            config = self.describe(topic)
            if "retention.ms" in config:
                return {
                    "retention_ms": int(config["retention.ms"]),
                    "retention_bytes": int(config.get("retention.bytes", "-1")),
                    "min_insync_replicas": int(config.get("min.insync.replicas", "1")),
                    "source": "broker",
                }
        return {
            "retention_ms": self.options.retention_ms,
            "retention_bytes": self.options.retention_bytes,
            "min_insync_replicas": self.options.min_insync,
            "source": "configured (the cluster has no admin API to confirm it)",
        }


@dataclass(frozen=True)
class TableRecord:
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: dict[str, bytes]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"


class TopicTable:
    """A small topic read in full, from the beginning, and caught up on each ``refresh``.

    Uses manual assignment (no consumer group), so reading it never commits anything and
    never disturbs anyone. Blocking: call from a worker thread.
    """

    def __init__(self, options: KafkaOptions, topic: str) -> None:
        self.options = options
        self.topic = topic
        self.records: list[TableRecord] = []
        self._next: dict[int, int] = {}
        self._consumer: Any = None

    def refresh(self) -> list[TableRecord]:
        """Read what was appended since the last refresh; return the new records."""
        ck = kafka()
        if self._consumer is None:
            self._consumer = ck.Consumer(
                self.options.consumer_config(f"~table-{uuid.uuid4().hex[:12]}")
            )
        c = self._consumer
        timeout = self.options.timeout_ms / 1000
        t = c.list_topics(topic=self.topic, timeout=timeout).topics.get(self.topic)
        if t is None or t.error is not None:
            return []
        todo: dict[int, int] = {}
        for p in t.partitions:
            low, high = c.get_watermark_offsets(ck.TopicPartition(self.topic, p), timeout=timeout)
            start = max(self._next.get(p, low), low)
            if start < high:
                todo[p] = high
                self._next[p] = start
        if not todo:
            return []
        c.assign([ck.TopicPartition(self.topic, p, self._next[p]) for p in todo])
        new: list[TableRecord] = []
        deadline = time.monotonic() + timeout
        try:
            while any(self._next[p] < high for p, high in todo.items()):
                if time.monotonic() > deadline:
                    raise BusUnavailable(f"Kafka bus: reading {self.topic} timed out")
                for msg in c.consume(500, 0.05):
                    if msg.error() is not None:
                        continue
                    p, o = msg.partition(), msg.offset()
                    if o < self._next.get(p, 0):
                        continue
                    self._next[p] = o + 1
                    headers = {k: v or b"" for k, v in (msg.headers() or [])}
                    new.append(TableRecord(p, o, msg.key() or b"", msg.value() or b"", headers))
        finally:
            c.unassign()
        self.records.extend(new)
        return new

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
