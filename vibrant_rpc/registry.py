"""The model registry: the embedded models plus the user's own entries.

Users add or override entries by id in ``~/.vibrant/registry.json`` (or the file
named by ``VIBRANT_REGISTRY``). Entries are checked when read; a bad entry is
refused with a message naming the file, the entry and the field, and never
hides the rest of the registry.

A model renamed keeps its earlier ids as ``aliases``: they are looked up like the id
(``get``, ``find``, ``in``, ``canonical_id``), and files cached under an alias are
still found (``local_filenames(alias)``), so caches and settings written before the
rename keep working. An entry whose id is an alias replaces the model it names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import msgspec

from .errors import ModelNotFoundError, RegistryError, validation_problem
from .fsutil import is_sha256
from .gguf.architectures import ArchFacts

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class ModelFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file of a model on the Hub; a split model has several."""

    filename: str
    size_bytes: NonNegative | None = None
    sha256: str | None = None


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A registry entry. ``files`` is never empty once the registry has read it."""

    id: str
    hf_repo: str
    ram_required_mb: NonNegative
    name: str = ""
    family: str = ""
    parameters: str = ""
    quantization: str = ""
    context_window: NonNegative = 4096
    file_size_mb: NonNegative | None = None
    filename: str | None = None
    files: list[ModelFile] = []
    sha256: str | None = None
    revision: str | None = None
    recommended: bool = False
    description: str = ""
    tags: list[str] = []
    deprecated: bool = False
    replaced_by: str | None = None
    aliases: list[str] = []  # earlier ids of this model, oldest first
    architecture: ArchFacts | None = None  # for the memory need before a download

    @property
    def names(self) -> list[str]:
        """The id, then the aliases: every name the model is found by."""
        return [self.id, *self.aliases]

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1

    @property
    def ram_required_bytes(self) -> int:
        return self.ram_required_mb * 1024 * 1024

    @property
    def download_bytes(self) -> int:
        """What a download costs: the files' known sizes, else the registry's estimate."""
        if self.files and all(f.size_bytes is not None for f in self.files):
            return sum(f.size_bytes or 0 for f in self.files)
        return (self.file_size_mb or 0) * 1024 * 1024

    def local_filenames(self, name: str | None = None) -> list[str]:
        """Cache file names; a split model keeps llama.cpp's shard suffix on the id.
        ``name``: one of the aliases, for the names files got before the model's rename."""
        stem = name or self.id
        n = len(self.files)
        if n == 1:
            return [f"{stem}.gguf"]
        return [f"{stem}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]


class _RegistryFile(msgspec.Struct):
    models: list[msgspec.Raw]


class _EntryId(msgspec.Struct):
    id: Any = None


def _check_name(value: str, what: str) -> str | None:
    if not value:
        return f"{what} is empty"
    if "/" in value or "\\" in value:
        return f"{what} {value!r} contains a path separator"
    if value in {".", ".."} or ".." in value:
        return f"{what} {value!r} contains '..'"
    if _CONTROL.search(value):
        return f"{what} {value!r} contains a control character"
    return None


def _check_sha(value: str | None) -> str | None:
    if value is not None and not is_sha256(value):
        return f"{value!r} is not a SHA-256 (64 lowercase hex digits)"
    return None


def _validate(info: ModelInfo) -> tuple[str, str] | None:
    """The first problem of an entry as (field, reason), or None."""
    if problem := _check_name(info.id, "id"):
        return "id", problem
    parts = info.hf_repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) and ".." not in p for p in parts):
        return "hf_repo", f"{info.hf_repo!r} is not 'owner/name'"
    if not info.files and info.filename is None:
        return "filename", "either 'filename' or 'files' is required"
    if info.filename is not None and (problem := _check_name(info.filename, "filename")):
        return "filename", problem
    if problem := _check_sha(info.sha256):
        return "sha256", problem
    for i, f in enumerate(info.files):
        if problem := _check_name(f.filename, "filename"):
            return f"files[{i}].filename", problem
        if problem := _check_sha(f.sha256):
            return f"files[{i}].sha256", problem
    if info.revision is not None and (_CONTROL.search(info.revision) or not info.revision):
        return "revision", f"{info.revision!r} is not a valid revision"
    for i, alias in enumerate(info.aliases):
        # an alias names cache files too, so it must pass the id's checks
        if problem := _check_name(alias, "alias"):
            return f"aliases[{i}]", problem
    return _check_arch(info.architecture)


def _check_arch(facts: ArchFacts | None) -> tuple[str, str] | None:
    if facts is None:
        return None
    if not facts.architecture or _CONTROL.search(facts.architecture):
        return "architecture.architecture", f"{facts.architecture!r} is not an architecture name"
    if facts.kv_heads > facts.heads or facts.heads % facts.kv_heads:
        return "architecture.kv_heads", (
            f"{facts.kv_heads} key/value heads do not divide {facts.heads} attention heads"
        )
    return None


def _normalise(info: ModelInfo) -> ModelInfo:
    files = info.files or [ModelFile(info.filename or "", None, info.sha256)]
    if len(files) == 1 and files[0].sha256 is None and info.sha256:
        files = [ModelFile(files[0].filename, files[0].size_bytes, info.sha256)]
    return msgspec.structs.replace(
        info,
        name=info.name or info.id,
        files=files,
        filename=files[0].filename,
        sha256=files[0].sha256 if len(files) == 1 else info.sha256,
        aliases=_unique(a for a in info.aliases if a != info.id),
    )


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def parse_entries(data: bytes, source: str) -> tuple[list[ModelInfo], list[RegistryError]]:
    """Parse a registry file; return the valid entries and one error per refused entry."""
    try:
        doc = msgspec.json.decode(data, type=_RegistryFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        return [], [
            RegistryError(
                f'{source}: not a registry file ({err}); expected {{"models": [...]}}',
                file=source,
            )
        ]
    good: list[ModelInfo] = []
    bad: list[RegistryError] = []
    for index, raw in enumerate(doc.models):
        try:
            entry_id = msgspec.json.decode(raw, type=_EntryId).id
        except (msgspec.DecodeError, msgspec.ValidationError):
            entry_id = None
        label = f"entry {index + 1}" + (f" (id {entry_id!r})" if isinstance(entry_id, str) else "")
        try:
            info = msgspec.json.decode(raw, type=ModelInfo)
        except msgspec.ValidationError as err:
            mismatch = validation_problem(err)
            field, reason = mismatch.field() or "(entry)", mismatch.reason
        else:
            problem = _validate(info)
            if problem is None:
                good.append(_normalise(info))
                continue
            field, reason = problem
        bad.append(
            RegistryError(
                f"{source}: {label}: field '{field}': {reason}",
                file=source,
                entry=index + 1,
                field=field,
            )
        )
    return good, bad


class Registry:
    """The merged registry, in order: embedded models first, then the user's additions."""

    def __init__(self, models: list[ModelInfo], problems: list[RegistryError] | None = None):
        self._models: dict[str, ModelInfo] = {}
        self._aliases: dict[str, str] = {}  # alias -> the id it stands for
        self.problems: list[RegistryError] = problems or []
        for m in models:
            self._add(m, "<registry>")

    def _add(self, model: ModelInfo, source: str) -> None:
        """Add or replace ``model``; an entry under an alias replaces the model it names,
        and a replacement keeps the aliases of what it replaces (the old caches are its)."""
        target = self._aliases.get(model.id, model.id)
        before = self._models.get(target)
        names = _unique([*(before.aliases if before else []), *model.names])
        kept: list[str] = []
        for alias in (n for n in names if n != target):
            owner = alias if alias in self._models else self._aliases.get(alias, target)
            if owner != target:
                self.problems.append(
                    RegistryError(
                        f"{source}: model {target!r}: alias {alias!r} already names "
                        f"{owner!r}; ignored.",
                        file=source,
                        field="aliases",
                    )
                )
                continue
            kept.append(alias)
            self._aliases[alias] = target
        self._models[target] = msgspec.structs.replace(model, id=target, aliases=kept)

    @classmethod
    def embedded(cls) -> Registry:
        data = resources.files("vibrant_rpc").joinpath("registry.json").read_bytes()
        models, problems = parse_entries(data, "<embedded registry>")
        registry = cls(models, problems)
        if registry.problems:  # a packaging bug, not a user error
            raise RuntimeError(str(registry.problems[0]))
        return registry

    @classmethod
    def load(cls, user_file: Path | None) -> Registry:
        registry = cls.embedded()
        if user_file is None or not user_file.exists():
            return registry
        try:
            data = user_file.read_bytes()
        except OSError as err:
            registry.problems.append(
                RegistryError(f"{user_file}: cannot be read ({err.strerror})", file=str(user_file))
            )
            return registry
        models, problems = parse_entries(data, str(user_file))
        registry.problems.extend(problems)
        for m in models:
            registry._add(m, str(user_file))
        return registry

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models or model_id in self._aliases

    def canonical_id(self, model_id: str) -> str:
        """The id for an alias; any other name unchanged (known or not)."""
        return model_id if model_id in self._models else self._aliases.get(model_id, model_id)

    def find(self, model_id: str) -> ModelInfo | None:
        return self._models.get(self.canonical_id(model_id))

    def get(self, model_id: str) -> ModelInfo:
        model = self.find(model_id)
        if model is not None:
            return model
        names = [*self._models, *self._aliases]
        close = difflib.get_close_matches(model_id, names, n=6, cutoff=0.4)
        if not close:
            close = [n for n in names if model_id.lower() in n.lower()]
        raise ModelNotFoundError(model_id, _unique(self.canonical_id(n) for n in close)[:3])
