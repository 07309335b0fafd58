"""Producer processes: a source and its publisher in a child process.

Parsing venue messages is the most CPU-hungry step of ingest, and Python runs one thread
at a time; a child process gives it a core of its own while the parent's writer stores
and acknowledges. The two only meet on the durable bus, exactly as separate services
would, so the delivery contract is unchanged: the child advances its source checkpoint
only after the bus confirmed the records, and the parent's writer acks only after the
store committed.

The child dies with its parent (``PR_SET_PDEATHSIG``, plus a parent-pid check), stops
after its current batch on SIGTERM, and reports its totals back when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from tickvault.core.config import Settings, settings_from_builtins, settings_to_builtins
from tickvault.core.errors import BusError, ResourceFault, TickvaultError
from tickvault.core.faults import resource_fault
from tickvault.core.gc_tuning import tune_for_throughput
from tickvault.core.spawning import without_main_reimport

_PR_SET_PDEATHSIG = 1


@dataclass
class ProducerResult:
    lines: int = 0
    published: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    skipped_lines: int = 0
    files_already_done: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    foreign: int = 0
    header_markets: list[str] = field(default_factory=list)
    untimed_quotes: int = 0
    error: str | None = None
    fault: bool = False
    """``error`` is a local fault (disk full, I/O error): see :mod:`tickvault.core.faults`."""


@dataclass(frozen=True)
class ReplaySpec:
    """What a replay producer reads (a picklable description, not a live source)."""

    paths: list[Path]
    restart: bool = False
    exchange: str = "binance"
    line_format: str = "auto"
    symbol: str | None = None


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


async def _produce(
    settings: Settings, spec: ReplaySpec, lines: Synchronized[int], parent: int
) -> ProducerResult:
    from tickvault.bus import open_bus
    from tickvault.delivery.breaker import BreakerPolicy
    from tickvault.delivery.checkpoints import CheckpointStore
    from tickvault.delivery.failover import FailoverPublisher
    from tickvault.delivery.publisher import FramePublisher, SourcePump
    from tickvault.sources.replay import ReplaySource

    stop = asyncio.Event()
    give_up = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:  # the first stops reading; the grace, or a second, gives up
        if stop.is_set():
            give_up.set()
        stop.set()
        loop.call_later(settings.shutdown.grace_s, give_up.set)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    checkpoints = CheckpointStore(settings.state_path)
    source = ReplaySource(
        spec.paths,
        checkpoints,
        restart=spec.restart,
        exchange=spec.exchange,
        line_format=spec.line_format,  # type: ignore[arg-type]
        symbol=spec.symbol,
    )
    # The configured fallback chain, as in `run` (the parent runs a writer on each bus).
    # No spool here: the input file is itself durable, so while every bus is down the
    # producer simply waits (its checkpoint does not move) instead of copying it to disk.
    buses = [open_bus(settings.bus_url), *(open_bus(url) for url in settings.bus.fallback)]
    b = settings.breaker
    failover = FailoverPublisher(
        buses,
        None,
        names=[f"bus{i}" for i in range(len(buses))],
        policy=BreakerPolicy(
            b.bus_failure_threshold, b.success_threshold, b.open_base_s, b.open_max_s, b.jitter
        ),
        check_every_s=settings.bus.health_check_s,
        probe_stream=settings.bus.stream,
    )
    stop_health = asyncio.Event()
    health = asyncio.create_task(failover.run(stop_health))
    publisher = FramePublisher(
        failover,
        settings.bus.stream,
        max_records=settings.publisher.frame_records,
        window=settings.validation.replay,
    )
    pump = SourcePump(publisher, stop, give_up)

    async def report() -> None:
        while True:
            lines.value = pump.lines
            if os.getppid() != parent:
                os._exit(1)
            await asyncio.sleep(0.1)

    reporter = asyncio.create_task(report())
    try:
        await pump.run(source)
    except BusError:
        if not give_up.is_set():
            raise
        # Stopped while the bus refused: nothing unconfirmed was checkpointed, so the next
        # run reads those lines again.
    finally:
        reporter.cancel()
        lines.value = pump.lines
        stop_health.set()
        await health
        for bus in buses:
            await bus.close()
        checkpoints.close()
    return ProducerResult(
        lines=pump.lines,
        published=publisher.stats.records,
        rejects=pump.rejects,
        skipped_lines=source.skipped_lines,
        files_already_done=source.files_already_done,
        skipped=dict(source.skipped),
        foreign=source.foreign,
        header_markets=list(source.header_markets),
        untimed_quotes=source.untimed_quotes,
    )


def _child_main(
    settings_raw: dict[str, Any],
    spec: ReplaySpec,
    lines: Synchronized[int],
    conn: Connection,
    parent: int,
) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
    settings = settings_from_builtins(settings_raw)
    tune_for_throughput()
    try:
        result = asyncio.run(_produce(settings, spec, lines, parent))
    except TickvaultError as exc:
        result = ProducerResult(error=str(exc), fault=isinstance(exc, ResourceFault))
    except Exception as exc:  # reported as one line by the parent, never a bare death
        fault = resource_fault(exc, "the replay producer")
        text = str(fault) if fault is not None else f"unexpected {type(exc).__name__}: {exc}"
        result = ProducerResult(error=text, fault=fault is not None)
    conn.send(result)
    conn.close()


class ProducerProcess:
    """Runs a replay source and its publisher in a child process."""

    def __init__(self, settings: Settings, spec: ReplaySpec) -> None:
        self.settings = settings
        self.spec = spec
        self.result = ProducerResult()
        ctx = mp.get_context("spawn")
        self._lines: Synchronized[int] = ctx.Value("q", 0)
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_child_main,
            args=(settings_to_builtins(settings), spec, self._lines, send, os.getpid()),
            name="tickvault-producer",
            daemon=True,
        )
        self._send = send
        self._killed = False

    @property
    def lines(self) -> int:
        return int(self._lines.value)

    def stop(self) -> None:
        if self._proc.pid is not None and self._proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child (a shutdown it did not finish in time; safe, see module)."""
        if self._proc.pid is not None and self._proc.is_alive():
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    def start(self) -> None:
        """Start the child now (idempotent), e.g. while the parent still opens its store."""
        if self._proc.pid is None:
            with without_main_reimport():  # the child needs nothing from the command line
                self._proc.start()
            self._send.close()

    async def run(self) -> ProducerResult:
        """Start the child if needed and wait for it; raise TickvaultError if it failed."""
        self.start()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, self._wait)
        self.result = result
        if result.error:
            if result.fault:
                raise ResourceFault(f"producer: {result.error}")
            raise TickvaultError(f"producer: {result.error}")
        return result

    def _wait(self) -> ProducerResult:
        try:
            result: ProducerResult = self._recv.recv()
        except EOFError:
            self._proc.join()
            if self._killed:  # stopped at the end of a shutdown grace: not an error
                return ProducerResult()
            code = self._proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
            return ProducerResult(
                error=f"replay producer process ended without a report ({how}); rerun to"
                " resume from the last checkpoint"
            )
        self._proc.join()
        return result
