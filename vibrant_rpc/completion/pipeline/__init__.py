"""The completion pipeline: an ordered chain of small pure rules over the text as it
streams, so that a completion ends where the code does and never doubles what is
there (docs/completion.md). Each rule is a module: ``stops``, ``one_line``, ``scope``,
``brackets``, ``line_suffix``, ``code_below``, ``repetition``, ``time_budget``; the
facts they share are the ``cursor``'s, the language's come from ``languages.json``."""

from .chain import RULES, Pipeline, apply
from .cursor import Cursor, cursor_at
from .languages import Language, language_for
from .time_budget import DEFAULT_MS

__all__ = ["DEFAULT_MS", "RULES", "Cursor", "Language", "Pipeline", "apply", "cursor_at",
           "language_for"]  # fmt: skip
