"""Run the API, the worker, or both in one process, with clean start-up and shutdown.

First SIGTERM/SIGINT: stop taking work, finish (or roll back) the batch in
flight, close connections, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace

import psycopg
from aiohttp import web

from . import systemd
from .api import DEFAULT_MODEL, HTTP_PARSER_LIMITS, create_app
from .config import Settings
from .db import make_pool, migrate
from .embedded import start_embedded
from .models import EncoderCache, register_models
from .worker import Worker

log = logging.getLogger(__name__)

#: Seconds the batch in flight may take to finish after SIGTERM; then it is aborted
#: between inference calls and rolled back, so the process exits within 10 s.
SHUTDOWN_GRACE = 6.0


def prepare_database(settings: Settings, encoders: EncoderCache) -> Settings:
    """Resolve the database (embedded when no URL), migrate it and publish the models."""
    if not settings.database_url:
        settings = replace(settings, database_url=start_embedded(settings.data_dir))
        print(f"database: {settings.database_url}  (embedded PostgreSQL; try: psql '{settings.database_url}')", flush=True)
    assert settings.database_url
    migrate(settings.database_url)
    with psycopg.connect(settings.database_url) as conn:
        register_models(conn, encoders)
    return settings


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("event=second_signal signal=%d action=exit_now", signum)
            os._exit(1)
        log.info("event=shutdown_requested signal=%d", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def serve(
    settings: Settings, encoders: EncoderCache, *, api: bool, worker: bool, stop: asyncio.Event | None = None
) -> None:
    """Run until stopped; ``settings.database_url`` must already be resolved."""
    assert settings.database_url
    if stop is None:
        stop = asyncio.Event()
        _install_signal_handlers(stop)
    await asyncio.to_thread(encoders.get, DEFAULT_MODEL)  # load (and export if needed) before serving
    tasks: list[asyncio.Task[None]] = []
    workers: list[Worker] = []
    runner: web.AppRunner | None = None
    pool = make_pool(settings.database_url, min_size=1, max_size=8, name="api") if api else None
    try:
        if pool is not None:
            await pool.open()
            runner = web.AppRunner(create_app(settings, pool, encoders), access_log=None, **HTTP_PARSER_LIMITS)
            await runner.setup()
            await web.TCPSite(runner, settings.host, settings.port).start()
            print(f"api: http://{settings.host}:{settings.port}", flush=True)
        if worker:
            workers.append(Worker(settings, encoders))
            tasks.append(asyncio.create_task(workers[0].run(stop), name="worker"))
            print("worker: running", flush=True)
        log.info("event=ready api=%s worker=%s", api, worker)
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(systemd.watchdog(stop, interval), name="watchdog"))
        await stop.wait()
        systemd.notify("STOPPING=1")
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            if pending:
                for w in workers:
                    w.abort.set()
                _, pending = await asyncio.wait(pending, timeout=2.0)
            for task in pending:
                task.cancel()
    finally:
        if runner is not None:
            await runner.cleanup()
        if pool is not None:
            await pool.close()
    log.info("event=stopped")


def run(settings: Settings, *, api: bool, worker: bool) -> int:
    encoders = EncoderCache.from_settings(settings)
    try:
        settings = prepare_database(settings, encoders)
    except Exception as exc:  # start-up failure: say what and exit non-zero
        print(f"vectorize: cannot start: {exc}", file=sys.stderr)
        return 1
    asyncio.run(serve(settings, encoders, api=api, worker=worker))
    return 0
