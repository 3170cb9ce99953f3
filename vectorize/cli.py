"""The ``vectorize`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import Settings

ENV_HELP = """\
environment:
  DATABASE_URL            PostgreSQL (14+, with pgvector) to use; unset = embedded PostgreSQL 18
  VECTORIZE_DATA_DIR      where the embedded PostgreSQL keeps its data (default: the user data dir)
  VECTORIZE_HOST, VECTORIZE_PORT   API bind address (default 127.0.0.1:8080)
  VECTORIZE_API_TOKEN     require 'Authorization: Bearer <token>' on the API
  VECTORIZE_BATCH_SIZE    rows per worker transaction (default 256)
  VECTORIZE_POLL_INTERVAL seconds between fallback polls (default 5)
  VECTORIZE_THREADS       inference threads (default: all cores)
  VECTORIZE_MODELS_DIR    model manifests and exported ONNX files (default: models/)
  VECTORIZE_LOG_LEVEL     DEBUG, INFO, WARNING (default INFO)
  VECTORIZE_OPENAI_MODELS comma-separated models of an OpenAI-compatible API, used as "openai/<model>"
  VECTORIZE_OPENAI_BASE_URL  that API's base URL (default https://api.openai.com/v1); key: OPENAI_API_KEY
"""


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        log_level=getattr(args, "log_level", None),
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    from .service import run

    settings = _settings(args)
    _setup_logging(settings.log_level)
    return run(settings, api=args.command in ("up", "api"), worker=args.command in ("up", "worker"))


def cmd_migrate(args: argparse.Namespace) -> int:
    from .models import EncoderCache
    from .service import prepare_database

    settings = _settings(args)
    _setup_logging(settings.log_level)
    try:
        prepare_database(settings, EncoderCache.from_settings(settings))
    except Exception as exc:
        print(f"vectorize: migration failed: {exc}", file=sys.stderr)
        return 1
    print("schema is up to date")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from .embedding.registry import export_paths, is_exported, load_manifests

    settings = _settings(args)
    print(f"{'model':45} {'dim':>4} {'precision':9} {'exported':8} {'size':>9}")
    for manifest in load_manifests(settings.models_dir).values():
        exported = is_exported(manifest, settings.models_dir)
        size = sum(p.stat().st_size for p in export_paths(manifest, settings.models_dir) if p.exists())
        size_text = f"{size / 1e6:.1f} MB" if exported else "-"
        print(f"{manifest.name:45} {manifest.dimension:>4} {manifest.precision:9} {'yes' if exported else 'no':8} {size_text:>9}")
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    from .embedding.registry import ensure_exported, load_manifests

    settings = _settings(args)
    manifests = load_manifests(settings.models_dir)
    names = args.names or list(manifests)
    for name in names:
        if name not in manifests:
            print(f"vectorize: unknown model {name!r}; known: {', '.join(manifests)}", file=sys.stderr)
            return 2
        onnx_path, _ = ensure_exported(manifests[name], settings.models_dir, force=args.force)
        print(f"{name}: {onnx_path}")
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
    p = sub.add_parser("migrate", help="apply the schema to the database and register the models")
    p.set_defaults(func=cmd_migrate)
    models = sub.add_parser("models", help="list or export embedding models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="models this installation can run").set_defaults(func=cmd_models_list)
    p = models.add_parser("export", help="export models' ONNX graphs from their official weights")
    p.add_argument("names", nargs="*", help="model names (default: all)")
    p.add_argument("--force", action="store_true", help="export again even if the files exist")
    p.set_defaults(func=cmd_models_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
