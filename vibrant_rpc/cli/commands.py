"""``vibrant model ...``: the facade's (``Vibrant``, app.py) operations in a terminal.

Exit codes: 0 success, 1 a failure the user can act on (message on stderr, no
traceback), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console

from ..app import Scope, Vibrant
from ..errors import VibrantError
from ..redact import RedactingFilter
from ..states import Auto
from ..units import parse_duration, parse_size
from . import render
from .serve import add_serve

if TYPE_CHECKING:
    from ..download.downloader import DownloadResult

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = args.json
        # Piped output is for scripts and logs: never truncate or wrap a table row there.
        width = None if sys.stdout.isatty() else 200
        self.out = Console(highlight=False, width=width)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self._app: Vibrant | None = None

    @property
    def app(self) -> Vibrant:
        if self._app is None:
            self._app = Vibrant()
            # Partial downloads nobody touched for a day go, at every start (the seed's rule).
            for model_id in self._app.cache.clean_stale_partials().removed:
                self.err.print(f"Removed a stale partial download of {model_id}.", markup=False)
        return self._app

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
        sys.stdout.flush()

    def show(self, value: Any, for_people: Callable[[], object]) -> int:
        """``value`` as JSON with ``--json``, else what ``for_people`` prints."""
        if self.json:
            self.emit_json(value)
        else:
            for_people()
        return EXIT_OK

    def warn_all(self) -> None:
        if self._app is not None:
            for warning in self._app.warnings:
                self.err.print(f"warning: {warning}", markup=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    ours = logging.getLogger("vibrant_rpc")
    ours.handlers[:] = [handler]
    ours.setLevel(getattr(logging, level.upper(), logging.WARNING))
    ours.propagate = False


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _auto_or_int(text: str) -> int | Auto:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"{value} is below -1")
    return value


# -- commands ---------------------------------------------------------------------------


def cmd_list(ctx: Context) -> int:
    scope: Scope = "cached" if ctx.args.cached else "all" if ctx.args.all else "default"
    listing = ctx.app.list_models(scope)

    def for_people() -> None:
        render.model_table(ctx.out, listing.models)
        if listing.selection is not None:
            reason = listing.selection.reason
            ctx.out.print(f"This machine: {reason}.", markup=False, soft_wrap=True)
        else:
            ctx.out.print(f"This machine: {listing.unselected}", markup=False)
        if (engine := ctx.app.engine_status(ask=True)) is not None:
            ctx.out.print(render.engine_line(engine), markup=False, soft_wrap=True)

    return ctx.show(listing.models, for_people)


def cmd_info(ctx: Context) -> int:
    status = ctx.app.model_info(ctx.args.model_id)
    return ctx.show(status, lambda: render.model_info(ctx.out, status))


def cmd_select(ctx: Context) -> int:
    selection = ctx.app.select(ctx.args.ram)

    def for_people() -> None:
        model = ctx.app.registry.get(selection.model_id)
        ctx.out.print(f"{selection.model_id}  ({model.name})", markup=False)
        ctx.out.print(f"Why: {selection.reason}.", markup=False, soft_wrap=True)
        if selection.warning:
            ctx.err.print(f"warning: {selection.warning}", markup=False)

    return ctx.show(selection, for_people)


def cmd_fit(ctx: Context) -> int:
    args = ctx.args
    request = ctx.app.load_request(context_size=args.context, gpu_layers=args.gpu_layers)
    result = ctx.app.fit(args.model_id, request)
    return ctx.show(result, lambda: render.fit(ctx.out, result))


def cmd_remove(ctx: Context) -> int:
    model_id = ctx.app.registry.canonical_id(ctx.args.model_id)
    freed = ctx.app.remove(model_id)
    return ctx.show(
        {"model_id": model_id, "freed_bytes": freed},
        lambda: ctx.out.print(f"Removed {model_id}, freed {render.size(freed)}.", markup=False),
    )


def cmd_verify(ctx: Context) -> int:
    entry = ctx.app.verify(ctx.args.model_id)
    return ctx.show(
        entry, lambda: ctx.out.print(f"{entry.id}: OK ({entry.checksum}).", markup=False)
    )


def cmd_cache(ctx: Context) -> int:
    stats = ctx.app.cache_stats()
    entries = ctx.app.cache.entries()
    partials = ctx.app.cache.partials()
    return ctx.show(
        {"stats": stats, "models": entries, "partials": partials},
        lambda: render.cache(ctx.out, stats, entries, partials, usage=ctx.args.usage),
    )


def cmd_cache_clean(ctx: Context) -> int:
    result = ctx.app.clean(ctx.args.older_than)
    return ctx.show(result, lambda: render.removal(ctx.out, result))


def cmd_cache_prune(ctx: Context) -> int:
    result = ctx.app.prune(ctx.args.max_size)
    return ctx.show(result, lambda: render.removal(ctx.out, result))


def cmd_download(ctx: Context) -> int:
    model_id = ctx.app.resolve_id(ctx.args.model_id)
    if ctx.args.model_id == "auto" and not ctx.json:
        ctx.out.print(f"This machine gets {model_id}: {ctx.app.select().reason}.", markup=False)
    if ctx.json:
        on_progress = render.JsonProgress(sys.stdout)
        try:
            result = ctx.app.download(model_id, progress=on_progress)
        except KeyboardInterrupt:
            ctx.err.print(render.INTERRUPTED_DOWNLOAD, markup=False)
            return 130
        ctx.emit_json(result)
        return EXIT_OK
    with render.DownloadBar(ctx.out, model_id) as bar:
        try:
            result = ctx.app.download(model_id, progress=bar.update)
        except KeyboardInterrupt:
            bar.stop()
            ctx.err.print(render.INTERRUPTED_DOWNLOAD, markup=False)
            return 130
    for pruned in result.pruned:
        ctx.out.print(f"Removed {pruned} to stay under the cache size limit.", markup=False)
    ctx.out.print(download_message(model_id, result), markup=False)
    return EXIT_OK


def cmd_import(ctx: Context) -> int:
    args = ctx.args
    if args.scan:
        found = ctx.app.scan_other_caches()
        saved = sum(f.saves_bytes for f in found)
        return ctx.show(
            {"found": found, "saves_bytes": saved}, lambda: render.found_elsewhere(ctx.out, found)
        )
    if not args.path or not args.model:
        ctx.err.print("usage: vibrant model import PATH --model ID, or --scan", markup=False)
        return EXIT_USAGE
    result = ctx.app.import_file(args.model, Path(args.path))
    return ctx.show(
        result, lambda: ctx.out.print(download_message(args.model, result), markup=False)
    )


def download_message(model_id: str, result: DownloadResult) -> str:
    """ "Verified" only for bytes hashed against a reference known before the download."""
    size, where, digest = render.size(result.size_bytes), result.paths[0], result.sha256[:16]
    if result.cached:
        return (
            f"{model_id} is already downloaded ({size}) at {where}; its files have the size, "
            f"date and GGUF header recorded (`vibrant model verify {model_id}` hashes them)."
        )
    whole = len(result.adopted) == len(result.paths)  # nothing came from the network
    done = "Repaired" if result.repaired else "Installed" if whole else "Downloaded"
    why = f" ({'; '.join(result.repaired)})" if result.repaired else ""
    # whose reference it was: the registry's pin, the Hub's word, or a trusted mirror's
    vouched = sorted(set(result.reference_by.values()))
    by = " and ".join("the registry" if v == "registry" else v for v in vouched)
    check = (
        f"verified sha256:{digest}…" + (f" (the reference: {by}'s)" if by else "")
        if result.verified
        else f"sha256:{digest}… recorded, not checked (no reference hash is known for it)"
    )
    taken = "".join(
        f"; {a.filename} taken from {a.path} ({a.tool}, {a.method}), not downloaded"
        for a in result.adopted
    )
    hosts = sorted(set(result.served_by.values()))
    origin = f", from {', '.join(hosts)}" if hosts else ""
    return f"{done} {model_id}{why} ({size}){origin}, {check}, at {where}{taken}"


def cmd_update(ctx: Context) -> int:
    args = ctx.args
    ids = [ctx.app.resolve_id(args.model_id)] if args.model_id else None
    check = ctx.app.check_updates(ids)
    if args.check or (ids is None and not args.all) or not check.updates:

        def for_people() -> None:
            render.updates(ctx.out, check)
            if ids is None and not args.all and check.updates:
                ctx.out.print("Run `vibrant model update --all` to update them.", markup=False)

        return ctx.show(check, for_people)
    for update in check.updates:
        if ctx.json:
            result = ctx.app.update_model(update.model_id, progress=render.JsonProgress(sys.stdout))
            ctx.emit_json(result)
            continue
        ctx.out.print(
            f"Updating {update.model_id}: {render.short(update.current_revision)} → "
            f"{render.short(update.latest_revision)} ({render.size(update.size_bytes)})",
            markup=False,
        )
        with render.DownloadBar(ctx.out, update.model_id) as bar:
            try:
                result = ctx.app.update_model(update.model_id, progress=bar.update)
            except KeyboardInterrupt:
                bar.stop()
                ctx.err.print(
                    "Update interrupted; the current version still works, and what was "
                    "downloaded is kept: run the same command again to resume.",
                    markup=False,
                )
                return 130
        how = "verified" if result.verified else "recorded, not checked:"
        ctx.out.print(
            f"Updated {update.model_id} ({how} sha256:{result.sha256[:16]}…); the new file "
            "was renamed over the old one, never written in place.",
            markup=False,
        )
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------


def _options(*, defaults: bool) -> argparse.ArgumentParser:
    """--json and --log-level, taken before the command as after it (`vibrant --log-level
    debug model list`). Only the top level has defaults: a subcommand's would overwrite
    a value given before it."""
    common = argparse.ArgumentParser(add_help=False)
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    common.add_argument("--json", action="store_true", help="machine-readable output", **unset)
    common.add_argument(
        "--log-level",
        default=os.environ.get("VIBRANT_LOG_LEVEL", "warning") if defaults else argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        help="what vibrant logs to stderr (default: $VIBRANT_LOG_LEVEL, else warning)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="vibrant",
        description="Local GGUF models for vibrant.",
        parents=[_options(defaults=True)],
    )
    top = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    model = top.add_parser("model", help="list, download and manage models", parents=[common])
    sub = model.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name: str, fn: Callable[[Context], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=fn)
        return p

    p = add("list", cmd_list, "the registry, what is cached, and the model this machine gets")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--all", action="store_true", help="include deprecated models")
    scope.add_argument("--cached", action="store_true", help="only downloaded models")

    add("info", cmd_info, "everything about one model").add_argument("model_id")
    add("remove", cmd_remove, "delete a downloaded model").add_argument("model_id")
    add("verify", cmd_verify, "re-hash a downloaded model's files").add_argument("model_id")
    p = add("select", cmd_select, "the model this machine (or the given RAM) gets, and why")
    p.add_argument("--ram", type=_size, help="RAM to select for, e.g. 16GiB")

    p = add("fit", cmd_fit, "what a model needs in memory here, by part, and whether it fits")
    p.add_argument("model_id", nargs="?", default="auto", help="default: this machine's model")
    p.add_argument(
        "--context", type=_auto_or_int, help="tokens of context, or 'auto' (default: the setting)"
    )
    p.add_argument(
        "--gpu-layers", type=_auto_or_int, help="layers on the GPU, -1 for all, or 'auto'"
    )

    p = add("cache", cmd_cache, "cache folder, usage and partial downloads")
    p.add_argument("--usage", action="store_true", help="use counts and last-used times")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    c = cache_sub.add_parser(
        "clean", parents=[common], help="remove partial downloads (and unused models)"
    )
    c.add_argument(
        "--older-than", type=_duration, help="also remove models unused this long, e.g. 30d"
    )
    c.set_defaults(func=cmd_cache_clean)
    c = cache_sub.add_parser(
        "prune", parents=[common], help="remove least recently used models down to a size"
    )
    c.add_argument("--max-size", type=_size, help="size to prune to (default: the cache limit)")
    c.set_defaults(func=cmd_cache_prune)

    p = add("update", cmd_update, "check for newer model files on the Hub, and update")
    target = p.add_mutually_exclusive_group()
    target.add_argument("model_id", nargs="?", help="one model (default: every cached model)")
    target.add_argument("--all", action="store_true", help="update every model that has one")
    p.add_argument("--check", action="store_true", help="only list the updates, with sizes")

    p = add("import", cmd_import, "take a model file you already have instead of downloading it")
    p.add_argument("path", nargs="?", help="a GGUF file (it is hashed; yours is left as it is)")
    p.add_argument("--model", help="the model the file belongs to")
    p.add_argument(
        "--scan", action="store_true", help="list files other tools downloaded, and the saving"
    )

    p = add("download", cmd_download, "download (or resume) a model from the Hub")
    p.add_argument("model_id", help="a model id, or 'auto' for the model this machine gets")
    add_serve(add)  # `vibrant model serve`: its own module, over engines.supervisor
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    ctx = Context(args)
    try:
        code: int = args.func(ctx)
    except VibrantError as err:
        ctx.warn_all()
        ctx.err.print(f"error: {err.message}", markup=False)
        if err.hint:
            ctx.err.print(err.hint, markup=False)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        ctx.err.print("Interrupted.", markup=False)
        return 130
    ctx.warn_all()
    return code


if __name__ == "__main__":
    sys.exit(main())
