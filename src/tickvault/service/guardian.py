"""Compose a :class:`~tickvault.guardian.engine.Guardian` from settings (CLI and pipeline)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from tickvault.bus.base import Bus, Entry
from tickvault.core.config import GuardianSettings, Settings
from tickvault.core.errors import ConfigError
from tickvault.delivery.upkeep import parse_duration_ms
from tickvault.guardian.actions import ActionContext, ActionRunner
from tickvault.guardian.alerts import (
    AlertChannel,
    AlertRouter,
    Dispatcher,
    LogChannel,
    TelegramChannel,
    WebhookChannel,
)
from tickvault.guardian.checks import Checks, LiveFn, Thresholds
from tickvault.guardian.engine import Guardian
from tickvault.guardian.findings import Clock, SystemClock
from tickvault.guardian.journal import Journal
from tickvault.guardian.policy import Policy, PolicySettings
from tickvault.stores.base import Store

if TYPE_CHECKING:
    from tickvault.delivery.writer import Writer
    from tickvault.delivery.writer_restarts import RestartableWriters

log = logging.getLogger(__name__)


def _s(value: str) -> float:
    return parse_duration_ms(value) / 1000


def policy_settings(g: GuardianSettings) -> PolicySettings:
    return PolicySettings(
        for_cycles=g.for_cycles,
        grace_s=_s(g.grace),
        cooldown_s=_s(g.cooldown),
        backoff_initial_s=_s(g.backoff_initial),
        backoff_max_s=_s(g.backoff_max),
        backoff_reset_s=_s(g.backoff_reset),
        max_recoveries=g.max_recoveries,
        window_s=_s(g.window),
    )


def thresholds(g: GuardianSettings) -> Thresholds:
    from tickvault.delivery.spool import parse_size

    return Thresholds(
        writer_stale_s=_s(g.writer_stale),
        backlog_max=g.backlog_max,
        pending_age_max_s=_s(g.pending_age_max),
        spool_max_bytes=parse_size(g.spool_max_bytes),
        source_stale_s=_s(g.source_stale),
        wal_lag_max=g.wal_lag_max,
        zero_price_share_max=g.zero_price_share_max,
        quality_rows=g.quality_rows,
    )


def channels(g: GuardianSettings, env: dict[str, str] | None = None) -> list[AlertChannel]:
    env = dict(os.environ) if env is None else env
    out: list[AlertChannel] = []
    for name in g.alerts:
        if name == "log":
            out.append(LogChannel())
        elif name == "webhook":
            if not g.webhook_url:
                raise ConfigError("[guardian] alerts has webhook but webhook_url is not set")
            out.append(WebhookChannel(g.webhook_url))
        elif name == "telegram":
            token = env.get(g.telegram_token_env)
            if not token or not g.telegram_chat_id:
                raise ConfigError(
                    f"[guardian] telegram needs the token in ${g.telegram_token_env} and"
                    " telegram_chat_id"
                )
            out.append(TelegramChannel(token, g.telegram_chat_id, api_url=g.telegram_api_url))
        else:
            raise ConfigError(f"[guardian] unknown alert channel {name!r} (log, webhook, telegram)")
    return out


def build_guardian(
    settings: Settings,
    *,
    bus: Bus | None,
    store: Store | None,
    live: LiveFn | None = None,
    clock: Clock | None = None,
    dry_run: bool | None = None,
    ctx: ActionContext | None = None,
    env: dict[str, str] | None = None,
    with_channels: bool = True,
) -> Guardian:
    g = settings.guardian
    clock = clock or SystemClock()
    checks = Checks(clock, bus, store, settings.bus.stream, settings.bus.group, live, thresholds(g))
    ctx = ctx or ActionContext()
    ctx.bus, ctx.store = bus, store
    ctx.stream, ctx.group = settings.bus.stream, settings.bus.group
    if settings.writer.consumer:
        ctx.consumer = settings.writer.consumer
    journal = Journal.in_data_dir(settings.data_dir)
    runner = ActionRunner(
        ctx, journal, clock=clock.now, dry_run=g.dry_run if dry_run is None else dry_run
    )
    router = AlertRouter(_s(g.group_wait), _s(g.group_interval), _s(g.repeat_interval))
    dispatcher = Dispatcher(channels(g, env)) if with_channels else None
    return Guardian(
        checks.run,
        policy=Policy(policy_settings(g)),
        runner=runner,
        router=router,
        journal=journal,
        clock=clock,
        dispatcher=dispatcher,
        runbook_base=g.runbook_base_url,
    )


def start_guardian(
    settings: Settings,
    *,
    bus: Bus,
    store: Store,
    live: LiveFn,
    writer: Writer,
    restartable: RestartableWriters | None,
    drain_spool: Callable[[], Awaitable[int]] | None,
    stop: asyncio.Event,
) -> tuple[Guardian, asyncio.Task[None]] | None:
    """The guardian of ``tickvault run`` and its task, stopping with ``stop`` (None when
    ``[guardian] enabled = false``). ``writer`` is the live writer (upkeep claims to its
    consumer and hands it what it claims), ``restartable`` its restartable run, and
    ``drain_spool`` moves one spool batch to a bus (None without a spool)."""
    if not settings.guardian.enabled:
        return None

    async def process(entries: Sequence[Entry]) -> None:
        await writer.process(entries, stop)

    # Stream upkeep claims to the live writer's own consumer and hands what it claims to
    # the writer: never to a consumer name that reads nothing.
    restarters: dict[str, Callable[[], Awaitable[None]]] = (
        {"writer": restartable.restart}
        if restartable is not None and restartable.restartable
        else {}
    )
    ctx = ActionContext(
        restarters=restarters,
        drain_spool=drain_spool,
        consumer=writer.config.consumer,
        upkeep_handler=process,
    )
    guardian = build_guardian(settings, bus=bus, store=store, live=live, ctx=ctx)

    async def run() -> None:
        try:
            await guardian.run(stop, settings.guardian.interval_s)
        finally:
            guardian.journal.close()

    return guardian, asyncio.create_task(run())
