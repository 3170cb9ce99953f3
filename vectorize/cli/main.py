"""The ``vectorize`` command line."""

from __future__ import annotations

import argparse
import sys

from vectorize.cli.common import settings_from, setup_logging
from vectorize.cli.models import (
    cmd_models_check,
    cmd_models_export,
    cmd_models_list,
    cmd_models_pull,
    cmd_models_register,
    cmd_models_tune,
)
from vectorize.config import environment_help
from vectorize.core.job_definition import FIELDS, OPTIONAL

ENV_HELP = environment_help()


def cmd_serve(args: argparse.Namespace) -> int:
    from vectorize.cli.serve import run

    settings = settings_from(args)
    setup_logging(settings.log_level)
    return run(settings, api=args.command in ("up", "api"), worker=args.command in ("up", "worker"))


def cmd_migrate(args: argparse.Namespace) -> int:
    from vectorize.cli.serve import model_catalog, prepare_database

    settings = settings_from(args)
    setup_logging(settings.log_level)
    try:
        prepare_database(settings, model_catalog(settings))
    except Exception as exc:
        print(f"vectorize: migration failed: {exc}", file=sys.stderr)
        return 1
    print("schema is up to date")
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

    settings = settings_from(args)
    setup_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level)
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
