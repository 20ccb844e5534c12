"""Secrets out of text meant for people: credentials in URLs and Hugging Face tokens.

``HF_ENDPOINT=http://user:hf_…@mirror`` is how some teams reach their mirror; the URL then
turns up in error messages, progress and logs, which editors show and users paste into
bug reports.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
HIDDEN = "***"


def redact(text: str) -> str:
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{HIDDEN}@", text)
    return _TOKEN.sub(HIDDEN, text)


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
