"""A completion's way from request to text: the loaded model's life (``lifecycle``:
lazy load, fallback, one completion at a time, idle unload), a load's plan
(``load_plan``) and the answer from the last suggestion when the user types it
(``typed_through``)."""

from .lifecycle import Lifecycle, StateChange
from .load_plan import LoadRequest
from .typed_through import TypedThrough

__all__ = ["Lifecycle", "LoadRequest", "StateChange", "TypedThrough"]
