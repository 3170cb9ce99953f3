"""Run the API, the worker, or both in one process, with clean start-up and shutdown.

First SIGTERM/SIGINT: stop taking work, abort inference in flight (its batches roll
back, their rows stay queued and are charged nothing), close connections, exit 0 --
within 10 s however slow the CPU. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import replace

import psycopg
from aiohttp import web

from vectorize.cli import systemd
from vectorize.config import Settings
from vectorize.db.database import connect, make_pool, migrate, publish_models
from vectorize.db.local_postgres import start_local_postgres
from vectorize.embedding import providers
from vectorize.embedding.build.tuning import Tuner
from vectorize.embedding.build.tuning_records import TuningStore
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog, ModelInfo
from vectorize.embedding.errors import EmbedderUnavailable
from vectorize.http.access import check_exposure
from vectorize.http.app import HTTP_PARSER_LIMITS, api_tokens, create_app
from vectorize.worker.loop import Worker

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.service")

#: Seconds the worker's batches may take to roll back and its connections to close after
#: SIGTERM. Inference in flight is aborted at once (between two inference calls, each well
#: under a second on every CPU measured): waiting for a 512-row batch to finish took ~10 s
#: of inference on 2 AVX2 cores, past the 10 s after which systemd and orchestrators kill.
SHUTDOWN_GRACE = 6.0


#: Longest wait between two tries to reach a remote model that was down at start-up.
MODEL_RETRY_MAX = 60.0


def provider_protocols(settings: Settings) -> tuple[providers.Protocol, ...]:
    """The remote providers configured (openai/ is the catalog's own, from its settings)."""
    s = settings
    configured: list[providers.Protocol] = [providers.Ollama("ollama", s.ollama_base_url.rstrip("/"))]
    if s.cohere_api_key:
        configured.append(providers.Cohere("cohere", s.cohere_base_url.rstrip("/"), s.cohere_api_key))
    if s.voyage_api_key:
        voyage = s.voyage_base_url.rstrip("/")
        configured.append(providers.Voyage("voyage", voyage, s.voyage_api_key, dimension=s.voyage_output_dimension))
    if s.azure_openai_endpoint and s.azure_openai_api_key:
        azure = s.azure_openai_endpoint.rstrip("/")
        configured.append(providers.Azure("azure", azure, s.azure_openai_api_key, api_version=s.azure_openai_api_version))
    if s.portkey_api_key:
        routing = {"x-portkey-provider": s.portkey_provider, "x-portkey-virtual-key": s.portkey_virtual_key}
        headers = {k: v for k, v in routing.items() if v}
        configured.append(providers.Portkey("portkey", s.portkey_base_url.rstrip("/"), s.portkey_api_key, headers=headers))
    return tuple(configured)


def model_catalog(settings: Settings) -> ModelCatalog:
    if settings.tune not in ("auto", "off"):
        raise ValueError(f"VECTORIZE_TUNE={settings.tune!r} is not valid: use auto or off")
    folders = [settings.models_dir] if settings.state_dir is None else [settings.state_dir, settings.models_dir]
    tuner = Tuner(
        TuningStore(folders), settings.models_dir, settings.threads or os.cpu_count() or 1, enabled=settings.tune == "auto"
    )
    catalog = ModelCatalog(
        settings.models_dir,
        settings.threads,
        tuner=tuner,
        openai_models=tuple(m.strip() for m in settings.openai_models.split(",") if m.strip()),
        openai_base_url=settings.openai_base_url,
        openai_api_key=settings.openai_api_key,
        protocols=provider_protocols(settings),
        remote_retries=settings.openai_max_retries,
        remote_backoff=settings.openai_backoff,
        remote_max_tokens=settings.openai_max_tokens,
    )
    return catalog


def prepare_database(
    settings: Settings, catalog: ModelCatalog, *, migrate_schema: bool = True
) -> tuple[Settings, dict[str, str]]:
    """Resolve the database (the local PostgreSQL when no URL is given), then bring its schema
    up to date and publish the models. Returns the settings with the URL, and the remote models
    that could not be reached (name -> why): publish them later with ``publish_when_reachable``."""
    if not settings.database_url:
        settings = replace(settings, database_url=start_local_postgres(settings.data_dir))
        if migrate_schema:
            print(f"database: {settings.database_url}  (embedded PostgreSQL; try: psql '{settings.database_url}')", flush=True)
    assert settings.database_url
    if not migrate_schema:
        return settings, {}
    migrate(settings.database_url)
    models, unavailable = catalog.available()
    with connect(settings.database_url) as conn:
        publish_models(conn, models)
    return settings, unavailable


async def publish_when_reachable(settings: Settings, catalog: ModelCatalog, names: list[str], stop: asyncio.Event) -> None:
    """Keep asking remote models that were down at start-up, and publish each once it answers,
    so that jobs can be created for them without a restart (their existing jobs just wait)."""
    delay = 1.0
    waiting = list(names)
    while waiting and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        for name in list(waiting):
            try:
                info = await asyncio.to_thread(catalog.probe_remote, name)
                await asyncio.to_thread(_publish, settings.database_url or "", info)
            except (EmbedderUnavailable, psycopg.OperationalError) as exc:
                log.info("event=remote_model_still_unavailable model=%s retry_in=%.0f error=%r", name, delay, str(exc))
                continue
            log.info("event=remote_model_published model=%s dimension=%d", name, info.dimension)
            waiting.remove(name)
        delay = min(delay * 2, MODEL_RETRY_MAX)


def _publish(database_url: str, info: ModelInfo) -> None:
    with connect(database_url) as conn:
        publish_models(conn, [info])


def _install_signal_handlers(stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT: graceful stop. A second one exits at once -- also when it arrives
    while the process is already past its event loop, so process-level handlers rather than the
    loop's (which go away with the loop and leave the default action, death by signal)."""
    loop = asyncio.get_running_loop()
    requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal requested
        if requested:
            log.warning("event=second_signal signal=%d action=exit_now", signum)
            os._exit(1)
        requested = True
        log.info("event=shutdown_requested signal=%d", signum)
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


async def serve(
    settings: Settings,
    catalog: ModelCatalog,
    *,
    api: bool,
    worker: bool,
    stop: asyncio.Event | None = None,
    unavailable_models: tuple[str, ...] = (),
) -> None:
    """Run until stopped; ``settings.database_url`` must already be resolved."""
    assert settings.database_url
    if stop is None:
        stop = asyncio.Event()
        _install_signal_handlers(stop)
    await asyncio.to_thread(catalog.get, DEFAULT_MODEL)  # load (and export if needed) before serving
    tasks: list[asyncio.Task[None]] = []
    if unavailable_models:
        tasks.append(asyncio.create_task(publish_when_reachable(settings, catalog, list(unavailable_models), stop)))
    workers: list[Worker] = []
    runner: web.AppRunner | None = None
    pool = (
        make_pool(settings.database_url, min_size=1, max_size=8, name="api", statement_timeout=settings.statement_timeout)
        if api
        else None
    )
    try:
        if pool is not None:
            await pool.open()
            runner = web.AppRunner(create_app(settings, pool, catalog), access_log=None, **HTTP_PARSER_LIMITS)
            await runner.setup()
            await web.TCPSite(runner, settings.host, settings.port).start()
            print(f"api: http://{settings.host}:{settings.port}", flush=True)
        if worker:
            workers.append(Worker(settings, catalog))
            tasks.append(asyncio.create_task(workers[0].run(stop), name="worker"))
            print("worker: running", flush=True)
        log.info("event=ready api=%s worker=%s", api, worker)
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(systemd.watchdog(stop, interval), name="watchdog"))
        await stop.wait()
        systemd.notify("STOPPING=1")
        for w in workers:
            w.abort.set()  # batches in inference roll back untouched: their rows stay queued, uncharged
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
    finally:
        if runner is not None:
            await runner.cleanup()
        if pool is not None:
            await pool.close()
    log.info("event=stopped")


def run(settings: Settings, *, api: bool, worker: bool) -> int:
    catalog = model_catalog(settings)
    try:
        if api:  # before anything starts: a misconfigured token file or an open API is a start-up error
            check_exposure(settings.host, api_tokens(settings), settings.allow_unauthenticated)
        settings, unavailable = prepare_database(settings, catalog)
    except Exception as exc:  # start-up failure: say what and exit non-zero
        print(f"vectorize: cannot start: {exc}", file=sys.stderr)
        return 1
    asyncio.run(serve(settings, catalog, api=api, worker=worker, unavailable_models=tuple(unavailable)))
    return 0
