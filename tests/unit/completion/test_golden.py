"""The completion pipeline's golden cases (golden/*.toml, golden/README.md): each raw
completion fed a character at a time through the ``Pipeline`` the server runs."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from vibrant_rpc.completion.pipeline import Pipeline, cursor_at, language_for

GOLDEN = Path(__file__).with_name("golden")
CURSOR = "║"


def cases() -> list[Any]:
    out = []
    for path in sorted(GOLDEN.glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        for case in doc["case"]:
            case["language"] = doc.get("language")
            out.append(pytest.param(case, id=f"{path.stem}: {case['name']}"))
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(case: dict[str, Any]) -> tuple[str, str]:
    text = case["text"]
    assert text.count(CURSOR) == 1, "one cursor per case"
    prefix, suffix = text.split(CURSOR)
    cursor = cursor_at(
        prefix,
        suffix,
        language_for(case["language"], None),
        case.get("multiline"),
        stops=case.get("stops", []),
        time_budget_ms=case.get("budget_ms", 0.0),
    )
    clock = Clock()
    pipeline = Pipeline(cursor, clock)
    sent = ""
    so_far = ""
    final: str | None = None
    for ch in case["raw"]:
        so_far += ch
        clock.now += case.get("ms_per_char", 0.0) / 1000
        n, ended = pipeline.check(so_far)
        if ended:
            final = so_far[:n]
            break
        if n > len(sent):
            assert so_far[:n].startswith(sent)
            sent = so_far[:n]
    if final is None:
        final = pipeline.final(so_far)
    assert final.startswith(sent), f"streamed {sent!r}, then the completion became {final!r}"
    return final, pipeline.stop_reason("stop")


@pytest.mark.parametrize("case", cases())
def test_golden(case: dict[str, Any]) -> None:
    text, reason = run(case)
    assert (text, reason) == (case["expected"], case["reason"])


def test_every_rule_has_golden_cases_in_three_languages() -> None:
    from vibrant_rpc.completion.pipeline import RULES

    seen: dict[str, set[str]] = {}
    for param in cases():
        case = param.values[0]
        seen.setdefault(case["reason"], set()).add(case["language"] or "neutral")
    for rule in RULES:
        assert rule.reason in seen, f"no golden case ends by {rule.reason}"
    assert len({lang for langs in seen.values() for lang in langs}) >= 3
