"""A completion's way from request to text: one editor's completions (``completer``: a new
one supersedes the one running, and typing through the last suggestion is answered from
it, ``typed_through``), the loaded model's life (``lifecycle``: lazy load, fallback, one
completion at a time, idle unload) and the options a load's request comes to for one
model (``load_plan``)."""

from .completer import Completer
from .lifecycle import Lifecycle, StateChange
from .typed_through import TypedThrough

__all__ = ["Completer", "Lifecycle", "StateChange", "TypedThrough"]
