"""Typing through a suggestion is answered from the last completion."""

from __future__ import annotations

from vibrant_rpc.completion.typed_through import TypedThrough, TypedThroughHit


def remembered() -> TypedThrough:
    tt = TypedThrough()
    tt.remember("m", "def f(x):\n", "\n\nprint(f(1))\n", "    return x + 1\n", "stop")
    return tt


def test_typed_start_gives_the_rest() -> None:
    hit = remembered().lookup("m", "def f(x):\n    ret", "\n\nprint(f(1))\n")
    assert hit == TypedThroughHit(text="urn x + 1\n", typed=7, finish_reason="stop")


def test_each_key_along_the_suggestion_hits() -> None:
    tt = remembered()
    text = "    return x + 1\n"
    for k in range(1, len(text)):
        hit = tt.lookup("m", "def f(x):\n" + text[:k], "\n\nprint(f(1))\n")
        assert hit is not None and hit.text == text[k:]


def test_misses() -> None:
    tt = remembered()
    suffix = "\n\nprint(f(1))\n"
    assert tt.lookup("m", "def f(x):\n", suffix) is None  # nothing typed: ask the model
    assert tt.lookup("m", "def f(x):\n    rex", suffix) is None  # typed something else
    assert tt.lookup("m", "def f(x):\n    ret", "\nother\n") is None  # suffix changed
    assert tt.lookup("other", "def f(x):\n    ret", suffix) is None  # another model
    assert tt.lookup("m", "def g(x):\n    ret", suffix) is None  # the start changed
    assert tt.lookup("m", "def f(x):\n    return x + 1\n", suffix) is None  # all typed


def test_cancelled_or_empty_completions_are_not_remembered() -> None:
    tt = TypedThrough()
    tt.remember("m", "a", None, "bcd", "cancelled")
    assert tt.lookup("m", "ab", None) is None
    tt.remember("m", "a", None, "", "stop")
    assert tt.lookup("m", "ab", None) is None
    tt.remember("m", "a", None, "bcd", "length")
    assert tt.lookup("m", "ab", None) == TypedThroughHit("cd", 1, "length")
    tt.forget()
    assert tt.lookup("m", "ab", None) is None
