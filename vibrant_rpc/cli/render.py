"""How the CLI shows things to a person: tables and short lines, sizes and times readable."""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..app import ModelStatus
from ..cache.manifest import ManifestEntry
from ..cache.store import CacheStats, PartialDownload, RemovalResult
from ..download.progress import Progress as DownloadProgress
from ..fit.plan import Fit
from ..units import format_bytes

if TYPE_CHECKING:
    # Only a type here: the updates module brings the HTTP client, which costs a sixth
    # of a second that commands without the network needn't pay.
    from ..cache.elsewhere import Found
    from ..download.updates import UpdateCheck
    from ..engines.engine import EngineStatus

INTERRUPTED_DOWNLOAD = (
    "Download interrupted. What was downloaded is kept: run the same command again to resume."
)

size = format_bytes


def ago(when: datetime | str | None) -> str:
    if when is None:
        return "never"
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit} ago"
    return "just now"


def partial_text(p: PartialDownload) -> str:
    if p.total_bytes:
        pct = 100 * p.downloaded_bytes / p.total_bytes
        text = f"partial {pct:.0f}% ({size(p.downloaded_bytes)} of {size(p.total_bytes)})"
    else:
        text = f"partial ({size(p.downloaded_bytes)})"
    return text + (", downloading now" if p.active else "")


RAM_NOTE = (
    "RAM NEEDED: the memory estimate at the configured context (`vibrant model fit ID` "
    "shows it by part); (registry): only the registry's figure is known of that model."
)


def ram_needed(s: ModelStatus) -> str:
    """The estimate's need; the registry's figure, labelled so, only where none exists."""
    if s.ram_needed_bytes is not None:
        return size(s.ram_needed_bytes)
    return f"{size(s.model.ram_required_bytes)} (registry)"


def model_table(console: Console, models: list[ModelStatus]) -> None:
    rows = []
    for s in models:
        m = s.model
        if s.cached:
            state = "cached"
        elif s.partial:
            state = partial_text(s.partial)
        else:
            state = "-"
        if m.deprecated:
            state += f" (deprecated{', use ' + m.replaced_by if m.replaced_by else ''})"
        rows.append(
            [
                "*" if s.selected else "",
                m.id,
                m.parameters,
                m.quantization,
                size(s.size_bytes if s.size_bytes is not None else m.download_bytes),
                ram_needed(s),
                state,
                ago(s.last_used) if s.cached else "",
            ]
        )
    head = ["", "ID", "PARAMS", "QUANT", "SIZE", "RAM NEEDED", "STATE", "LAST USED"]
    plain_table(console, head, rows)
    if any(s.selected for s in models):
        console.print("* the model this machine gets", markup=False)
    console.print(RAM_NOTE, markup=False, soft_wrap=True)


def plain_table(console: Console, head: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, written as plain lines: rich's Table lays out
    each cell as a renderable (about 2 ms a row: 20 s for a registry of 10,000 models)."""
    widths = [max(len(c) for c in column) for column in zip(head, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    console.print(Text(line(head), style="bold"), soft_wrap=True)
    console.file.write("".join(line(r) + "\n" for r in rows))
    console.file.flush()


def model_info(console: Console, s: ModelStatus) -> None:
    m = s.model
    rows: list[tuple[str, str]] = [
        ("id", m.id),
        ("name", m.name),
        ("family", m.family),
        ("parameters", m.parameters),
        ("quantization", m.quantization),
        ("context window", f"{m.context_window:,} tokens"),
        ("download size", size(m.download_bytes)),
        ("RAM (registry)", size(m.ram_required_bytes)),
        ("Hub repo", m.hf_repo + (f" @ {m.revision}" if m.revision else "")),
        ("files", ", ".join(f.filename for f in m.files)),
        ("recommended", "yes" if m.recommended else "no"),
        ("tags", ", ".join(m.tags)),
        ("description", m.description),
    ]
    if m.deprecated:
        rows.append(("deprecated", f"yes, replaced by {m.replaced_by}" if m.replaced_by else "yes"))
    if s.cached:
        rows += [
            ("cached", f"yes, {size(s.size_bytes)}"),
            ("revision", s.revision or "unknown"),
            ("last used", ago(s.last_used)),
            ("use count", str(s.use_count)),
        ]
        rows += [(f"from ({name})", where) for name, where in s.sources.items()]
        rows += [
            (
                f"version {i + 1}",
                f"{short(v.revision)} seen {ago(v.seen_at)}, {size(v.size_bytes)}, "
                f"sha256:{(v.sha256 or '?')[:16]}",
            )
            for i, v in enumerate(s.versions)
        ]
    elif s.partial:
        rows.append(("cached", partial_text(s.partial)))
    else:
        rows.append(("cached", "no"))
    if s.selected:
        rows.append(("this machine", "this is the model this machine gets"))
    if s.fit:
        rows += [("memory", s.fit.breakdown), ("here", _fits_line(s.fit))]
        rows += [("estimated from", _source_text(s.fit))]
    _rows(console, rows)


def _rows(console: Console, rows: list[tuple[str, str]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


_SOURCES = {
    "file": "the downloaded file's GGUF header",
    "hub": "the GGUF header on the Hub (read by Range, kept in models/.headers)",
    "registry": "the registry's architecture numbers",
}


def _source_text(f: Fit) -> str:
    return f.note or _SOURCES[f.header_source]


def _fits_line(f: Fit) -> str:
    verdict = "fits" if f.fits else "does not fit"
    return (
        f"{verdict}: needs {size(f.ram_needed_bytes)} of RAM, "
        f"{size(f.usable_ram_bytes)} usable of {size(f.total_ram_bytes)}"
    )


def fit(console: Console, f: Fit) -> None:
    """``vibrant model fit``: the breakdown, the plan and the verdict."""
    e = f.estimate
    gpu = f"{f.gpu_layers}" + (f" ({f.gpu.reason})" if f.gpu else "")
    free = f", {size(f.available_bytes)} free now" if f.available_bytes is not None else ""
    rows = [
        ("model", f"{f.model_id} ({e.label})"),
        ("context", f"{f.context:,} tokens"),
        ("weights", size(e.weights_bytes) + (", mapped from the file" if e.mapped_bytes else "")),
        ("KV cache", size(e.kv_cache_bytes)),
        ("compute", size(e.compute_bytes)),
        ("output + runtime", size(e.output_bytes + e.overhead_bytes)),
        ("total", f"{size(e.total_bytes)} ({size(e.cpu_bytes)} RAM, {size(e.gpu_bytes)} GPU)"),
        ("GPU layers", gpu),
        ("this machine", f"{size(f.total_ram_bytes)} RAM, less 2 GiB for the system{free}"),
        ("estimated from", _source_text(f)),
    ]
    _rows(console, rows)
    console.print(f"{f.model_id} {f.verdict}.", markup=False, soft_wrap=True)
    if f.warning:
        console.print(f"warning: {f.warning}", markup=False, soft_wrap=True)


def cache(
    console: Console,
    stats: CacheStats,
    entries: list[ManifestEntry],
    partials: list[PartialDownload],
    *,
    usage: bool,
) -> None:
    limit = size(stats.max_cache_bytes) if stats.max_cache_bytes is not None else "unlimited"
    console.print(f"Cache: {stats.cache_dir}", markup=False)
    console.print(
        f"Used: {size(stats.total_bytes)} in {stats.models} model(s), limit {limit}; "
        f"partial downloads {size(stats.partial_bytes)}",
        markup=False,
    )
    if entries:
        table = Table(box=None, pad_edge=False, header_style="bold")
        cols = ["ID", "SIZE", "DOWNLOADED", "LAST USED"] + (["USES"] if usage else [])
        for col in cols:
            table.add_column(col)
        order = sorted(entries, key=lambda e: e.last_touched) if usage else entries
        for e in order:
            row = [e.id, size(e.size_bytes), ago(e.downloaded_at), ago(e.last_used)]
            table.add_row(*row, *([str(e.use_count)] if usage else []))
        console.print(table)
    for p in partials:
        console.print(f"{p.model_id}: {partial_text(p)}", markup=False)


def short(commit: str | None) -> str:
    return commit[:8] if commit else "unknown"


def updates(console: Console, check: UpdateCheck) -> None:
    for line in check.errors:
        console.print(f"could not check {line}", markup=False)
    if not check.updates:
        console.print("Every downloaded model is up to date.", markup=False)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "CURRENT", "LATEST", "DOWNLOAD"):
        table.add_column(col)
    for u in check.updates:
        table.add_row(
            u.model_id, short(u.current_revision), short(u.latest_revision), size(u.size_bytes)
        )
    console.print(table)


def found_elsewhere(console: Console, found: list[Found]) -> None:
    """What `vibrant model import --scan` found in other tools' caches."""
    if not found:
        console.print("No other tool's cache holds a file of a model not downloaded here.")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "FILE", "TOOL", "SIZE", "MATCH"):
        table.add_column(col)
    for f in found:
        c = f.candidate
        match = "sha256" if f.verified_by_name else "name (hashed on import)"
        table.add_row(f.model_id, f.filename, c.tool, size(c.size), match)
    console.print(table)
    for f in found:  # whole, on lines of their own: a path cut short can't be pasted
        console.print(f"{f.model_id}: {f.candidate.path}", markup=False, soft_wrap=True)
    saved = sum(f.saves_bytes for f in found)
    console.print(
        f"Downloads would take these {size(saved)} from disk instead (with use_other_caches "
        "on, `vibrant model download <id>` does; each file is hashed first).",
        markup=False,
    )


def removal(console: Console, result: RemovalResult) -> None:
    if not result.removed:
        console.print("Nothing to remove.", markup=False)
        return
    for name in result.removed:
        console.print(f"Removed {name}", markup=False)
    console.print(f"Freed {size(result.freed_bytes)}.", markup=False)


class _SpeedColumn(ProgressColumn):
    """The download's own smoothed speed, in the same binary units as the byte counts
    (rich's TransferSpeedColumn says MB/s beside MiB)."""

    def render(self, task: Task) -> Text:
        rate = float(task.fields.get("rate") or 0.0)
        return Text(f"{format_bytes(rate)}/s" if rate > 0 else "?/s", style="progress.data.speed")


class DownloadBar:
    """A terminal progress bar: bytes, speed and time left, fed by download callbacks."""

    def __init__(self, console: Console, model_id: str) -> None:
        self.model_id = model_id
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _SpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._stopped = False

    def __enter__(self) -> DownloadBar:
        self._bar.start()
        self._task = self._bar.add_task(self.model_id, total=None)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._bar.stop()

    def update(self, p: DownloadProgress) -> None:
        if self._task is None:
            return
        labels = {"waiting": " (another process is downloading it)", "verifying": " (verifying)"}
        self._bar.update(
            self._task,
            completed=p.downloaded_bytes,
            total=p.total_bytes,
            description=self.model_id + labels.get(p.state, ""),
            rate=p.bytes_per_second,
        )


class JsonProgress:
    """``--json``: one JSON line per progress step, for scripts."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._encoder = msgspec.json.Encoder()

    def __call__(self, p: DownloadProgress) -> None:
        self.stream.write(
            self._encoder.encode({"event": "progress", **msgspec.structs.asdict(p)}).decode() + "\n"
        )
        self.stream.flush()


def engine_line(engine: EngineStatus) -> str:
    """Where completions go when the settings name an engine, and how it is."""
    where = f"Completions go to the engine {engine.name!r} at {engine.url}"
    if engine.healthy:
        model = f", serving {engine.model}" if engine.model else ""
        kind = f" ({engine.kind})" if engine.kind else ""
        return f"{where}{kind}: answering{model}."
    fallback = "; the local model answers meanwhile" if engine.fallback else ""
    hint = f" {engine.hint}" if engine.hint else ""
    return f"{where}: not answering ({engine.error or 'not asked yet'}){fallback}.{hint}"
