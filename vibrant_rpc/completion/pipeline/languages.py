"""What the pipeline knows of a language, as data (``languages.json``), chosen by the
editor's ``languageId`` or else by the file's extension.

The line comment, the top-level keywords and the extensions are Tabby's
(``crates/tabby-common/assets/languages.toml``); the block facts are ours
(docs/completion.md). Without a language the language-neutral rules apply.
"""

from __future__ import annotations

import functools
from pathlib import Path, PurePosixPath

import msgspec

DATA = Path(__file__).with_name("languages.json")


class Language(msgspec.Struct, frozen=True, kw_only=True):
    ids: list[str]
    extensions: list[str]
    line_comment: str
    # A line at column 0 that starts with one of them begins a new top-level statement.
    top_level_keywords: list[str]
    # A line ending with one of them opens a block (besides the brackets every language has).
    block_open_endings: list[str] = []
    # A line starting with one of them opens a block (Lua's ``function f(x)``).
    block_open_words: list[str] = []
    # A line starting with one of them closes a block (besides closing brackets).
    block_close_words: list[str] = []

    @property
    def name(self) -> str:
        return self.ids[0]


class _Table(msgspec.Struct, frozen=True):
    source: str
    languages: list[Language]


@functools.cache
def _table() -> _Table:
    return msgspec.json.decode(DATA.read_bytes(), type=_Table)


def language_for(language_id: str | None, filename: str | None) -> Language | None:
    """The editor's language id first (``python``, ``typescriptreact``...), else the
    file's extension; None when neither is known."""
    languages = _table().languages
    if language_id:
        wanted = language_id.lower()
        for lang in languages:
            if wanted in lang.ids:
                return lang
    if filename:
        ext = PurePosixPath(filename.replace("\\", "/")).suffix.lstrip(".")
        for lang in languages:
            if ext and ext in lang.extensions:
                return lang
    return None
