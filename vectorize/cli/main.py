"""The ``vectorize`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vectorize.config import Settings, environment_help
from vectorize.core.job_definition import FIELDS, OPTIONAL

ENV_HELP = environment_help()


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        log_level=getattr(args, "log_level", None),
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    from vectorize.cli.serve import run

    settings = _settings(args)
    _setup_logging(settings.log_level)
    return run(settings, api=args.command in ("up", "api"), worker=args.command in ("up", "worker"))


def cmd_migrate(args: argparse.Namespace) -> int:
    from vectorize.cli.serve import model_catalog, prepare_database

    settings = _settings(args)
    _setup_logging(settings.log_level)
    try:
        prepare_database(settings, model_catalog(settings))
    except Exception as exc:
        print(f"vectorize: migration failed: {exc}", file=sys.stderr)
        return 1
    print("schema is up to date")
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    """Ask a provider's model for its dimension and list it in vectorize.model, so that jobs created
    with INSERT in psql may name it (the API does this by itself on first use)."""
    from vectorize.cli.serve import model_catalog, prepare_database
    from vectorize.db.database import connect, publish_models
    from vectorize.embedding.errors import EmbedderUnavailable
    from vectorize.embedding.hub import HubModelRefused
    from vectorize.embedding.remote import RemoteEmbeddingError

    settings = _settings(args)
    _setup_logging(settings.log_level)
    catalog = model_catalog(settings)
    if catalog.remote_protocol(args.name) is None and not catalog.hub_model(args.name):
        print(
            f"vectorize: {args.name!r} names no provider configured here; see the README's Models section "
            "(openai/ needs OPENAI_API_KEY or VECTORIZE_OPENAI_MODELS, cohere/ COHERE_API_KEY, voyage/ VOYAGE_API_KEY, ...)",
            file=sys.stderr,
        )
        return 1
    try:
        settings, _ = prepare_database(settings, catalog)
        info = catalog.probe_hub(args.name) if catalog.hub_model(args.name) else catalog.probe_remote(args.name)
    except (RemoteEmbeddingError, EmbedderUnavailable, HubModelRefused) as exc:
        print(f"vectorize: model {args.name!r} could not be registered: {exc}", file=sys.stderr)
        return 1
    assert settings.database_url
    with connect(settings.database_url) as conn:
        publish_models(conn, [info])
    print(f"model {info.name} registered (dimension {info.dimension})")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    """Fetch a hub model's files (huggingface_hub's progress bars show the download) and export its
    graph now, so the first job on it starts at once instead of waiting for them."""
    from vectorize.cli.serve import model_catalog
    from vectorize.embedding.errors import EmbedderUnavailable
    from vectorize.embedding.hub import HubModelRefused, human_size
    from vectorize.embedding.registry import ensure_exported

    settings = _settings(args)
    _setup_logging(settings.log_level)
    catalog = model_catalog(settings)
    if not catalog.hub_model(args.name):
        print(
            f"vectorize: {args.name!r} is not a Hugging Face hub model name (<org>/<name>) this installation lacks",
            file=sys.stderr,
        )
        return 1
    try:
        pending = catalog.pending_download(args.name)
        if pending is not None:
            size = "its size unknown now" if pending.size is None else human_size(pending.size)
            print(f"model {args.name}: fetching {pending.repo} from the Hugging Face hub ({size})", flush=True)
        manifest = catalog.pull(args.name)
    except (EmbedderUnavailable, HubModelRefused) as exc:
        print(f"vectorize: {exc}", file=sys.stderr)
        return 1
    onnx_path, _ = ensure_exported(manifest, settings.models_dir)
    print(f"model {args.name}: files in {manifest.source['path']}, graph {onnx_path} ({manifest.dimension} dimensions)")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from vectorize.cli.serve import model_catalog
    from vectorize.embedding.registry import export_paths, is_exported, load_manifests

    settings = _settings(args)
    tuner = model_catalog(settings).tuner
    print(f"{'model':45} {'dim':>4} {'precision':9} {'exported':8} {'size':>9}  settings on this CPU")
    for manifest in load_manifests(settings.models_dir).values():
        exported = is_exported(manifest, settings.models_dir)
        size = sum(p.stat().st_size for p in export_paths(manifest, settings.models_dir) if p.exists())
        size_text = f"{size / 1e6:.1f} MB" if exported else "-"
        found = tuner.stored(manifest)
        choice = f"tuned {found[0].tuned_at}: {found[0].settings.describe()}" if found else "not tuned (defaults)"
        print(
            f"{manifest.name:45} {manifest.dimension:>4} {manifest.precision:9} {'yes' if exported else 'no':8} "
            f"{size_text:>9}  {choice}"
        )
    print(f"CPU: {tuner.cpu}")
    return 0


def cmd_models_tune(args: argparse.Namespace) -> int:
    """Measure each model's engine settings on this machine now and store them (what the first start does)."""
    from vectorize.cli.serve import model_catalog
    from vectorize.embedding.registry import load_manifests

    settings = _settings(args)
    _setup_logging(settings.log_level)
    tuner = model_catalog(settings).tuner
    manifests = load_manifests(settings.models_dir)
    for name in args.names or list(manifests):
        if name not in manifests:
            print(f"vectorize: unknown model {name!r}; known: {', '.join(manifests)}", file=sys.stderr)
            return 2
    folder = tuner.store.writable_folder()
    if folder is None:
        folders = ", ".join(str(f) for f in tuner.store.folders)
        print(f"vectorize: none of {folders} is writable; set VECTORIZE_STATE_DIR to a writable folder", file=sys.stderr)
        return 1
    print(f"CPU: {tuner.cpu}")
    for name in args.names or list(manifests):
        with tuner.store.lock(folder):
            found = None if args.force else tuner.stored(manifests[name])
            record = found[0] if found else tuner.tune(manifests[name], folder)
        print(f"\n{name}: {record.settings.describe()}{'' if found is None else f' (measured {record.tuned_at})'}")
        for candidate, figures in record.figures.items():
            print(f"  {candidate:70} " + ", ".join(f"{k} {v:g}" for k, v in figures.items()))
    print(f"\nstored in {folder}")
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    from vectorize.embedding.registry import ensure_exported, load_manifests, write_manifest

    settings = _settings(args)
    if args.source:
        if not args.names or len(args.names) != 1:
            print("vectorize: with --from, give exactly one NAME for the model (e.g. local/bge-small-en-v1.5)", file=sys.stderr)
            return 2
        try:
            write_manifest(Path(args.source), args.names[0], settings.models_dir)
        except (OSError, ValueError, KeyError) as exc:
            print(f"vectorize: {args.source} is not a usable sentence-transformers directory: {exc}", file=sys.stderr)
            return 1
    manifests = load_manifests(settings.models_dir)
    names = args.names or list(manifests)
    for name in names:
        if name not in manifests:
            print(f"vectorize: unknown model {name!r}; known: {', '.join(manifests)}", file=sys.stderr)
            return 2
        onnx_path, _ = ensure_exported(manifests[name], settings.models_dir, force=args.force)
        print(f"{name}: {onnx_path}")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """jobs …, search and demo: run one console coroutine, turning user errors into a message."""
    import asyncio

    import psycopg
    import psycopg_pool

    from vectorize.cli import console
    from vectorize.cli.serve import model_catalog, prepare_database
    from vectorize.core.errors import VectorizeError
    from vectorize.service import search

    settings = _settings(args)
    _setup_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level)
    try:
        catalog = model_catalog(settings)
        settings, _ = prepare_database(settings, catalog, migrate_schema=args.command == "demo")
        if args.command == "demo":
            coroutine = console.demo(settings, catalog)
        elif args.command == "search":
            columns = search.parse_return_columns(args.return_columns)
            coroutine = console.search(settings, catalog, args.job_name, args.query, args.limit, args.wait_for_sync, columns)
        elif args.jobs_command == "list":
            coroutine = console.jobs_list(settings)
        elif args.jobs_command == "show":
            coroutine = console.jobs_show(settings, args.job_name)
        elif args.jobs_command == "wait":
            coroutine = console.jobs_wait(settings, args.job_name, args.timeout)
        elif args.jobs_command == "delete":
            coroutine = console.jobs_delete(settings, args.job_name)
        elif args.jobs_command == "rollback":
            coroutine = console.jobs_rollback(settings, args.job_name)
        elif args.jobs_command == "alter":
            coroutine = console.jobs_alter(settings, catalog, args.job_name, _changes(args), args.dry_run)
        else:
            definition = {
                "job_name": args.job_name,
                "src_schema": args.schema,
                "src_table": args.table,
                "src_columns": [c.strip() for c in args.columns.split(",")],
                "primary_key": args.primary_key,
                "update_time_col": args.update_time_col,
                "model": args.model,
                **{name: getattr(args, name) for name in OPTIONAL},
            }
            coroutine = console.jobs_create(settings, catalog, definition, args.dry_run)
        return asyncio.run(coroutine)
    except VectorizeError as exc:
        print(f"vectorize: {exc.message}", file=sys.stderr)
        return 1
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        print(f"vectorize: cannot reach the database: {str(exc).strip()}", file=sys.stderr)
        return 1


def _changes(args: argparse.Namespace) -> dict[str, object]:
    """The definition fields ``jobs alter`` was given (the others keep their values)."""
    changes: dict[str, object] = {}
    if args.columns is not None:
        changes["src_columns"] = [c.strip() for c in args.columns.split(",")]
    for field in ("model", "update_time_col", *OPTIONAL):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    return changes


def _add_definition_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """The definition's optional fields as flags (core/job_definition.py says which, with their
    defaults); without defaults for ``jobs alter``, where a flag left out keeps the job's value."""
    for field in FIELDS:
        if field.required or field.setting:
            continue
        default = field.default if with_defaults else None
        shown = f" (default {str(default).lower() if isinstance(default, bool) else default})" if default is not None else ""
        if field.kind is bool:
            parser.add_argument(
                field.flag, action=argparse.BooleanOptionalAction, default=default, help=field.description + shown
            )
        else:
            parser.add_argument(field.flag, type=field.kind, default=default, help=field.description + shown)


def _add_jobs_commands(sub: argparse._SubParsersAction) -> None:
    from vectorize.embedding.catalog import DEFAULT_MODEL

    jobs = sub.add_parser("jobs", help="list, show, wait for, create, alter, roll back or delete jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_sub.add_parser("list", help="every job with its progress").set_defaults(func=cmd_console)
    for name, text in (
        ("show", "one job's definition, progress and last errors"),
        ("delete", "remove a job, its triggers and its embeddings"),
    ):
        p = jobs_sub.add_parser(name, help=text)
        p.add_argument("job_name")
        p.set_defaults(func=cmd_console)
    p = jobs_sub.add_parser("wait", help="progress bar until the backfill is done; exits 1 if the job fails")
    p.add_argument("job_name")
    p.add_argument("--timeout", type=float, help="give up (exit 1) after this many seconds")
    p.set_defaults(func=cmd_console)
    p = jobs_sub.add_parser("create", help="create a job (same rules as POST /api/v1/table)")
    p.add_argument("job_name")
    p.add_argument("--table", required=True, help="source table")
    p.add_argument("--schema", default="public", help="its schema (default public)")
    p.add_argument("--columns", required=True, help="comma-separated columns to embed")
    p.add_argument("--primary-key", required=True, help="primary-key (or unique, not-null) column")
    p.add_argument("--update-time-col", required=True, help="timestamptz column with each row's last update")
    p.add_argument("--model", default=DEFAULT_MODEL)
    _add_definition_options(p, with_defaults=True)
    p.add_argument("--dry-run", action="store_true", help="check everything and print the work it would be; create nothing")
    p.set_defaults(func=cmd_console)
    p = jobs_sub.add_parser(
        "alter", help="redefine a job online: the new generation is built beside the serving one, then switched to"
    )
    p.add_argument("job_name")
    p.add_argument("--columns", help="comma-separated columns to embed")
    p.add_argument("--model")
    p.add_argument("--update-time-col", help="timestamptz column with each row's last update")
    _add_definition_options(p, with_defaults=False)
    p.add_argument("--dry-run", action="store_true", help="check everything and print the work it would be; change nothing")
    p.set_defaults(func=cmd_console)
    p = jobs_sub.add_parser("rollback", help="cancel a redefinition being built, or switch back to the previous generation")
    p.add_argument("job_name")
    p.set_defaults(func=cmd_console)
    p = sub.add_parser("search", help="search a job and print the nearest rows")
    p.add_argument("job_name")
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--return-columns", metavar="COLS", help="comma-separated columns to show (within the job's return_columns)")
    p.add_argument(
        "--wait-for-sync",
        type=float,
        metavar="SECONDS",
        help="first wait (up to SECONDS) until every change committed so far is embedded (read-your-writes)",
    )
    p.set_defaults(func=cmd_console)
    sub.add_parser("demo", help="load pg_vectorize's 40 example products, embed them and search them").set_defaults(
        func=cmd_console
    )


def cmd_models_check(args: argparse.Namespace) -> int:
    from vectorize.embedding.registry import check_against_reference, load_encoder, load_manifests

    settings = _settings(args)
    manifests = load_manifests(settings.models_dir)
    if args.name not in manifests:
        print(f"vectorize: unknown model {args.name!r}; known: {', '.join(manifests)}", file=sys.stderr)
        return 2
    cosine = check_against_reference(load_encoder(manifests[args.name], settings.models_dir), Path(args.reference))
    worst = int(cosine.argmin())
    print(f"{args.name}: {len(cosine)} texts, cosine min {cosine.min():.6f} (item {worst}), mean {cosine.mean():.6f}")
    if cosine.min() < args.min_cosine:
        print(f"vectorize: below the required {args.min_cosine}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vectorize",
        description="Keep vector embeddings of PostgreSQL rows in sync, and search them.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "embedded (or DATABASE_URL) PostgreSQL, API and worker in one process"),
        ("api", "serve the HTTP API only"),
        ("worker", "run the embedding worker only"),
    ):
        p = sub.add_parser(
            name, help=text, description=text, epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--host", help="API bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="API port (default 8080)")
        p.add_argument("--log-level", help="DEBUG, INFO, WARNING")
        p.set_defaults(func=cmd_serve)
    _add_jobs_commands(sub)
    p = sub.add_parser("migrate", help="apply the schema to the database and register the models")
    p.set_defaults(func=cmd_migrate)
    models = sub.add_parser("models", help="list or export embedding models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="models this installation can run").set_defaults(func=cmd_models_list)
    p = models.add_parser("pull", help="fetch a Hugging Face hub model and export it ahead of its first job")
    p.add_argument("name", help="<org>/<name> on the hub, e.g. BAAI/bge-small-en-v1.5")
    p.set_defaults(func=cmd_models_pull)
    p = models.add_parser("register", help="list a provider's or a hub model for jobs created in SQL")
    p.add_argument("name", help="<provider>/<model> or <org>/<name> on the hub, e.g. ollama/nomic-embed-text")
    p.set_defaults(func=cmd_models_register)
    p = models.add_parser("export", help="export models' ONNX graphs from their official weights")
    p.add_argument("names", nargs="*", help="model names (default: all)")
    p.add_argument("--force", action="store_true", help="export again even if the files exist")
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="a local sentence-transformers directory (safetensors, tokenizer.json, its modules' configs)",
    )
    p.set_defaults(func=cmd_models_export)
    p = models.add_parser(
        "add", help="add a local sentence-transformers directory as a model (and its int8 variant, NAME-int8), exported"
    )
    p.add_argument("names", nargs=1, metavar="NAME", help="the model string jobs will name, e.g. local/bge-small-en-v1.5")
    p.add_argument("--from", dest="source", metavar="DIR", required=True, help="the sentence-transformers directory")
    p.set_defaults(func=cmd_models_export, force=False)
    p = models.add_parser(
        "tune", help="time the engine's candidate settings on this CPU and keep the fastest (done once at first start)"
    )
    p.add_argument("names", nargs="*", help="model names (default: all)")
    p.add_argument("--force", action="store_true", help="measure again even if this CPU has a stored choice")
    p.set_defaults(func=cmd_models_tune)
    p = models.add_parser("check", help="compare a model's embeddings with a reference set")
    p.add_argument("name")
    p.add_argument("--reference", required=True, help='JSON {"items": [{"text": ..., "embedding": [...]}]}')
    p.add_argument("--min-cosine", type=float, default=0.9999)
    p.set_defaults(func=cmd_models_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
