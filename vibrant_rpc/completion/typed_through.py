"""Typing through a suggestion: answer from the last completion, without the model.

When the user types the first characters of the ghost text, the editor asks again
with a prompt that is the previous prompt plus what was typed, and the same text
after the cursor. The answer is the rest of the previous completion, which the
model would mostly give again at temperature 0; the server answers at once and
says it was a cache hit.
"""

from __future__ import annotations

import threading

import msgspec

from ..states import FinishReason


class Remembered(msgspec.Struct, frozen=True):
    model_id: str
    prompt: str
    suffix: str | None
    text: str
    # A completion cut short ("length", "cancelled") can still be typed through:
    # the remainder is what was generated, which is all the model had said.
    finish_reason: FinishReason


class TypedThroughHit(msgspec.Struct, frozen=True):
    # What remains of the previous completion after the typed characters.
    text: str
    # How many characters of the previous completion the user typed.
    typed: int
    finish_reason: FinishReason


class TypedThrough:
    """The last request and completion of one client; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Remembered | None = None

    def remember(
        self,
        model_id: str,
        prompt: str,
        suffix: str | None,
        text: str,
        finish_reason: FinishReason,
    ) -> None:
        """Store a completion the model produced (not one answered from here)."""
        if finish_reason == "cancelled" or not text:
            return  # nothing anyone saw that could be typed through
        with self._lock:
            self._last = Remembered(model_id, prompt, suffix, text, finish_reason)

    def forget(self) -> None:
        with self._lock:
            self._last = None

    def lookup(self, model_id: str, prompt: str, suffix: str | None) -> TypedThroughHit | None:
        """The rest of the last completion if ``prompt`` is its prompt plus a start of it.

        None when the model, the suffix or the prompt's start differs, when nothing was
        typed (the same request again is the model's to answer), or when the whole
        completion was typed (nothing left to suggest).
        """
        with self._lock:
            last = self._last
        if last is None or last.model_id != model_id or last.suffix != suffix:
            return None
        if not prompt.startswith(last.prompt):
            return None
        typed = prompt[len(last.prompt) :]
        if not typed or not last.text.startswith(typed) or len(typed) >= len(last.text):
            return None
        return TypedThroughHit(
            text=last.text[len(typed) :], typed=len(typed), finish_reason=last.finish_reason
        )
