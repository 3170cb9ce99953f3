"""`vectorize models ...`: list, register, pull, add, export, tune and check the embedding models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vectorize.cli.common import settings_from, setup_logging


def cmd_models_register(args: argparse.Namespace) -> int:
    """Ask a provider's model for its dimension and list it in vectorize.model, so that jobs created
    with INSERT in psql may name it (the API does this by itself on first use)."""
    from vectorize.cli.serve import model_catalog, prepare_database
    from vectorize.db.database import connect, publish_models
    from vectorize.embedding.errors import EmbedderUnavailable
    from vectorize.embedding.hub import HubModelRefused
    from vectorize.embedding.remote import RemoteEmbeddingError

    settings = settings_from(args)
    setup_logging(settings.log_level)
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
    from vectorize.embedding.manifests import ensure_exported

    settings = settings_from(args)
    setup_logging(settings.log_level)
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
    from vectorize.embedding.manifests import export_paths, is_exported, load_manifests

    settings = settings_from(args)
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
    from vectorize.embedding.manifests import load_manifests

    settings = settings_from(args)
    setup_logging(settings.log_level)
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
    from vectorize.embedding.manifests import ensure_exported, load_manifests, write_manifest

    settings = settings_from(args)
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


def cmd_models_check(args: argparse.Namespace) -> int:
    from vectorize.embedding.manifests import check_against_reference, load_encoder, load_manifests

    settings = settings_from(args)
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
