"""What an editor shim's request window must be, judged the same way for both shims.

Neovim's window is bytes (UTF-8), VS Code's UTF-16 code units: for VS Code a text is a
Python str of code units (see ``to_units``), so lengths, slices and cuts mean the same as
in JavaScript and a lone surrogate stays visible.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T", bytes, str)


def utf8_starts(b: bytes) -> list[int]:
    """Offsets where a character of the (valid UTF-8) b begins, and len(b)."""
    return [i for i in range(len(b)) if b[i] & 0xC0 != 0x80] + [len(b)]


def utf16_starts(s: str) -> list[int]:
    """Offsets in the code units s where a character begins, and len(s)."""
    return [
        i
        for i in range(len(s))
        if not (0xDC00 <= ord(s[i]) <= 0xDFFF and i > 0 and 0xD800 <= ord(s[i - 1]) <= 0xDBFF)
    ] + [len(s)]


def to_units(s: str) -> str:
    """s as UTF-16 code units, one Python character each (as JavaScript sees it)."""
    raw = s.encode("utf-16-le", "surrogatepass")
    return "".join(chr(u) for u in struct.unpack(f"<{len(raw) // 2}H", raw))


def well_formed_units(s: str) -> bool:
    """Whether code units s are text a UTF-8 encoder can write (no lone surrogate)."""
    try:
        s.encode("utf-16-le", "surrogatepass").decode("utf-16-le").encode("utf-8")
    except UnicodeError:
        return False
    return True


def natural_start(row: int, opts: dict[str, int]) -> int:
    start = max(0, row - opts["prefix_lines"])
    return start - start % opts["window_step"]


def check_window(
    lines: Sequence[T],
    row: int,
    col: int,
    opts: dict[str, int],
    r: dict[str, Any],
    starts: Callable[[T], list[int]],
    sep: T,
) -> None:
    """Whole lines unless one line alone is over its cap, as many as fit, exactly the text
    before and after the cursor, and cuts inside a line only where a character begins.
    r: prompt, suffix, start_row, end_row (exclusive), prompt_cut, suffix_cut."""
    prompt: T = r["prompt"]
    suffix: T = r["suffix"]
    what = (
        f"row {row} col {col} opts {opts}: rows {r['start_row']}..{r['end_row']}, "
        f"prompt {len(prompt)}, suffix {len(suffix)}, cut {r['prompt_cut']}/{r['suffix_cut']}"
    )
    head, tail = lines[row][:col], lines[row][col:]
    pcap, scap, step = opts["max_prefix_chars"], opts["max_suffix_chars"], opts["window_step"]
    nat, start = natural_start(row, opts), r["start_row"]
    assert nat <= start <= row, what
    assert len(prompt) <= pcap, what

    # Lists built step by step: mypy reads [*lines[a:b], x] as a Sequence for either of T's
    # constraints, not as a list of T.
    def before(first: int) -> T:
        parts = list(lines[first:row])
        parts.append(head)
        return sep.join(parts)

    def after(end_row: int) -> T:
        parts = [tail]
        parts.extend(lines[row + 1 : end_row])
        return sep.join(parts)

    if r["prompt_cut"]:
        # The line's head alone is over the cap: its longest tail that begins a character.
        assert start == row and len(head) > pcap, what
        assert head.endswith(prompt), what
        cut = len(head) - len(prompt)
        at = starts(head)
        assert cut in at, what
        assert len(head) - max(s for s in at if s < cut) > pcap, what
    else:
        assert prompt == before(start), what
        if start > nat:  # lines were dropped: one step more would not have fit
            assert len(before(max(nat, start - step))) > pcap, what
            assert (start - nat) % step == 0 or row - start < step, what
    end: int = r["end_row"]
    limit = min(len(lines), row + 1 + opts["suffix_lines"])
    assert row < end <= limit, what
    assert len(suffix) <= scap, what
    if r["suffix_cut"]:
        assert end == row + 1 and len(tail) > scap, what
        assert tail.startswith(suffix), what
        at = starts(tail)
        assert len(suffix) in at, what
        assert min(s for s in at if s > len(suffix)) > scap, what
    else:
        assert suffix == after(end), what
        if end < limit:
            assert len(after(end + 1)) > scap, what
