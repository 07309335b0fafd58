"""Shared fixtures. Backend fixtures start real servers on free loopback ports in temp dirs.

``BUS_BACKENDS`` / ``STORE_BACKENDS`` list the backends the contract suites run against;
each name ``x`` needs a fixture ``x_bus_factory`` / ``x_store_factory`` returning an async
factory of fresh, isolated instances.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tickvault.bus.base import Bus
from tickvault.bus.kafka.bus import KafkaBus
from tickvault.bus.nats.bus import NatsBus
from tickvault.bus.redis.bus import RedisBus
from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.records import KINDS
from tickvault.stores.base import Store
from tickvault.stores.clickhouse.store import ClickHouseStore
from tickvault.stores.duckdb.store import DuckDBStore
from tickvault.stores.questdb.store import QuestDBStore

from .kafka_mock import KafkaMockCluster
from .kafka_server import KafkaServer
from .questdb_server import QuestDBServer
from .servers import ClickHouseServer, NatsServer, RedisServer

BUS_BACKENDS = ["sqlite", "redis", "nats", "kafka"]
STORE_BACKENDS = ["duckdb", "clickhouse", "questdb"]

BusFactory = Callable[[], Awaitable[Bus]]
StoreFactory = Callable[[], Awaitable[Store]]


def _close_all(items: list[Bus] | list[Store]) -> None:
    async def close() -> None:
        for item in items:
            await item.close()

    asyncio.run(close())


@pytest.fixture
def sqlite_bus_factory(tmp_path: Path) -> Iterator[BusFactory]:
    made: list[Bus] = []

    async def make() -> Bus:
        bus = SqliteBus(tmp_path / f"bus-{uuid.uuid4().hex[:8]}.sqlite3")
        made.append(bus)
        return bus

    yield make
    _close_all(made)


@pytest.fixture
def duckdb_store_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    made: list[Store] = []

    async def make() -> Store:
        store = DuckDBStore(tmp_path / f"store-{uuid.uuid4().hex[:8]}.duckdb")
        made.append(store)
        return store

    yield make
    _close_all(made)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """One clickhouse-server for the session; tests isolate themselves by database."""
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse")).start()
    yield server
    server.stop(signal.SIGKILL)  # its data dir is thrown away; a clean shutdown takes ~9 s


@pytest.fixture
def clickhouse_store_factory(clickhouse_server: ClickHouseServer) -> Iterator[StoreFactory]:
    made: list[Store] = []

    async def make() -> Store:
        store = ClickHouseStore.from_url(clickhouse_server.url(f"tv_{uuid.uuid4().hex[:12]}"))
        made.append(store)
        return store

    yield make
    _close_all(made)


@pytest.fixture(scope="session")
def redis_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server (AOF on) for the session; tests isolate themselves by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis-session")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_bus_factory(redis_session_server: RedisServer) -> Iterator[BusFactory]:
    made: list[Bus] = []

    async def make() -> Bus:
        prefix = f"t{uuid.uuid4().hex[:12]}:"
        bus = RedisBus.from_url(f"{redis_session_server.url}?prefix={prefix}")
        made.append(bus)
        return bus

    yield make
    _close_all(made)


@pytest.fixture(scope="session")
def nats_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server (JetStream) for the session; tests isolate themselves by prefix."""
    server = NatsServer(tmp_path_factory.mktemp("nats-session")).start()
    yield server
    server.stop()


NATS_CONTRACT_ACK_WAIT_MS = 2000
"""Redelivery delay of the contract suite's NATS groups (it replaces claims there)."""


@pytest.fixture
def nats_bus_factory(nats_session_server: NatsServer) -> Iterator[BusFactory]:
    made: list[Bus] = []

    async def make() -> Bus:
        prefix = f"t{uuid.uuid4().hex[:12]}_"
        bus = NatsBus.from_url(
            f"{nats_session_server.url}?prefix={prefix}&ack_wait_ms={NATS_CONTRACT_ACK_WAIT_MS}"
        )
        made.append(bus)
        return bus

    yield make
    _close_all(made)


# -- Kafka: real KRaft brokers (tests/kafka_server.py; jars from scripts/fetch-kafka.sh) --------


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """One real Kafka node (KRaft broker + controller) for the session; tests isolate
    themselves by topic prefix. Tests that kill a broker start their own."""
    server = KafkaServer(tmp_path_factory.mktemp("kafka-session")).start()
    yield server
    server.kill()  # its log dir is thrown away


@pytest.fixture(scope="session")
def kafka_mock_cluster() -> Iterator[KafkaMockCluster]:
    """librdkafka's mock cluster (three brokers, in this process), for fast unit-level
    tests; tests isolate themselves by topic prefix."""
    cluster = KafkaMockCluster(brokers=3)
    yield cluster
    cluster.close()


@pytest.fixture
def kafka_bus_factory(kafka_server: KafkaServer) -> Iterator[BusFactory]:
    """Kafka buses on the real session broker (KIP-848 groups: joins without a barrier)."""
    made: list[Bus] = []

    async def make() -> Bus:
        bus = KafkaBus.from_url(kafka_server.url(group_protocol="consumer", partitions=3))
        made.append(bus)
        return bus

    yield make
    _close_all(made)


# -- QuestDB: one real server for the session (tests/questdb_server.py) -----------------


@pytest.fixture(scope="session")
def questdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuestDBServer]:
    """One QuestDB server for the session, for tests that do not kill or damage it."""
    server = QuestDBServer(tmp_path_factory.mktemp("questdb-session")).start()
    yield server
    server.stop(signal.SIGKILL)  # its root is thrown away


def questdb_fresh_tables(server: QuestDBServer) -> None:
    """Drop tickvault's tables on ``server`` so the next store starts from nothing."""
    for spec in KINDS.values():
        query = urllib.parse.urlencode({"query": f"DROP TABLE IF EXISTS {spec.table}"})
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/exec?{query}") as r:
            assert r.status == 200


@pytest.fixture
def questdb_store_factory(questdb_server: QuestDBServer) -> Iterator[StoreFactory]:
    """QuestDB stores on the session server, each starting with no tickvault tables."""
    made: list[Store] = []

    async def make() -> Store:
        await asyncio.to_thread(questdb_fresh_tables, questdb_server)
        store = QuestDBStore.from_url(questdb_server.url)
        made.append(store)
        return store

    yield make
    _close_all(made)


def peer_of(bus: Bus) -> Bus:
    """A second bus object on the same streams and groups (another process, in effect)."""
    if isinstance(bus, KafkaBus):
        return KafkaBus(bus.options)
    raise NotImplementedError(f"no peer for {type(bus).__name__}")


@pytest.fixture(params=BUS_BACKENDS)
def bus_factory(request: pytest.FixtureRequest) -> BusFactory:
    factory: BusFactory = request.getfixturevalue(f"{request.param}_bus_factory")
    return factory


@pytest.fixture
async def bus(bus_factory: BusFactory) -> Bus:
    return await bus_factory()


@pytest.fixture(params=STORE_BACKENDS)
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    factory: StoreFactory = request.getfixturevalue(f"{request.param}_store_factory")
    return factory


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh redis-server (AOF on) per test, on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
