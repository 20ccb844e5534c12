"""Secrets out of text meant for people: credentials in URLs and Hugging Face tokens.

``HF_ENDPOINT=http://user:hf_…@mirror`` is how some teams reach their mirror; the URL then
turns up in error messages, progress and logs, which editors show and users paste into
bug reports.

Both searches run in time linear in the text: they redact every error and log record, on
the server's event loop too, and a client controls what goes into them (an unknown params
key is echoed in the error). A scheme pattern ahead of ``://`` (``[a-zA-Z][a-zA-Z0-9+.-]*``)
was tried at every letter of a long word and scanned the word each time: 40,000 letters
took 1.9 s, a 60,000-letter key held every request for 30 s.
"""

from __future__ import annotations

import logging
import re
import string
from typing import Any

# Credentials: what lies between a URL's "://" and the first "@" before any "/" or space.
# The search starts at "://" (a literal), and the scheme is checked backwards from there.
_CREDENTIALS = re.compile(r"://[^/\s@]+@")
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
# A token begins at a word boundary (the lookbehind: no word character before "hf_"). The
# pattern starts with its literal, which the search finds fast; a run of alphanumerics
# after "hf_" is scanned at most twice.
_TOKEN = re.compile(r"hf_(?<!\whf_)[A-Za-z0-9]{8,}\b")
HIDDEN = "***"


# Keys this process read (an engine's api_key_env or api_key_file): hidden wherever they
# appear. A key shorter than this would hide common words, and no real key is that short.
_SECRETS: set[str] = set()
SECRET_MIN_LENGTH = 8


def add_secret(value: str) -> None:
    if len(value) >= SECRET_MIN_LENGTH:
        _SECRETS.add(value)


def redact(text: str) -> str:
    # The substring tests skip a search where its literal is absent (10 MB in a few ms).
    if "://" in text:
        text = _redact_credentials(text)
    for secret in _SECRETS:  # str.replace: linear in the text, per key
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return _TOKEN.sub(HIDDEN, text) if "hf_" in text else text


def _redact_credentials(text: str) -> str:
    out: list[str] = []
    kept = 0  # text[:kept] is in out
    for m in _CREDENTIALS.finditer(text):
        if _has_scheme(text, m.start()):
            out.append(text[kept : m.start()])
            out.append(f"://{HIDDEN}@")
            kept = m.end()
    if not out:
        return text
    out.append(text[kept:])
    return "".join(out)


def _has_scheme(text: str, colon: int) -> bool:
    """Whether a URL scheme (a letter, then letters, digits, ``+.-``) ends at ``colon``.
    The walk back stops at the first character no scheme has (":" among them), so two
    walks never cover the same text: linear over all the matches."""
    i, letter = colon - 1, False
    while i >= 0 and text[i] in _SCHEME_CHARS:
        letter = letter or text[i].isalpha()
        i -= 1
    return letter


def redact_value(value: Any) -> Any:
    """``redact`` through the strings of a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    return value


class RedactingFilter(logging.Filter):
    """Redacts every record a handler emits (message and arguments, tracebacks too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
