"""What the user sees (issue 20): completions at real positions in real files, three
ways in one run: vibrant with the completion pipeline, vibrant's raw output (the model's
text as it came: ``raw: true``), and llama-server with ``n_indent`` and
``t_max_predict_ms`` set as llama.vscode sets them.

Files nobody here wrote: Python of the standard library, and lodash's JavaScript from
the VS Code extension's node_modules. Positions of three kinds, picked the same way in
every file (a fixed seed, in one stretch of ``REGION`` lines visited downwards), the
file as the user would have it at that moment:

- ``next_line``: a line inside a block (indented) whose text is not written yet: the
  cursor after its indentation, the lines below as they are; the truth is that line;
- ``mid_line``: just after an opening bracket whose contents are not written yet, with
  more than closers and punctuation after its closing bracket (``if isinstance(|) and
  x:``); the truth is what the brackets held;
- ``end_of_line``: a line typed up to a word boundary near its middle, the rest not
  written yet; the truth is the rest.

Requests have the VS Code shim's shape (whole-line window, 256 lines before, 64 after,
maxTokens 64, temperature 0), with the file's name and language. Gemma 3 270M has no
FIM tokens, so llama-server gets ``/completion`` with the prompt, ``n_indent`` = the
cursor line's indentation, ``t_max_predict_ms`` 2500 (llama.vscode's
``configuration.ts``), ``cache_prompt``.

The checker below is written from the issue's words, apart from the pipeline's rules:
a suggestion is text with something in it; it runs over several lines in mid-line; it
doubles the rest of the line (the suggestion's first line contains the rest, or ends
with its first three or more characters); it leaves the cursor's block (a later line
indented less than the cursor's line, or, where the cursor's line opens a block, not
deeper than it, a closing line the code below lacks excepted); it repeats the line
below (its first line, on the cursor's line, is the next non-blank line below).
First-line similarity: difflib's ratio of the suggestion's first line to the truth.

    .venv/bin/python bench/bench_quality.py
"""

from __future__ import annotations

import difflib
import json
import random
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_server import THREADS  # noqa: E402
from bench.bench_typing import LLAMA_SERVER, pct, start_llama_server, start_vibrant  # noqa: E402
from bench.results import write_section  # noqa: E402

STDLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
LODASH = ROOT / "editors" / "vscode" / "node_modules" / "lodash" / "lodash.js"
FILES = [
    (STDLIB / "argparse.py", "python"),
    (STDLIB / "tarfile.py", "python"),
    (STDLIB / "inspect.py", "python"),
    (LODASH, "javascript"),
]
PER_KIND = 6  # positions of each kind per file
REGION = 600  # lines of the file they are picked in
KINDS = ("next_line", "mid_line", "end_of_line")
PREFIX_LINES, SUFFIX_LINES, WINDOW_STEP = 256, 64, 32
MAX_TOKENS = 64
CONTEXT = 4096
PORT = 18412
T_MAX_PREDICT_MS = 2500  # llama.vscode's configuration.ts default
SEED = 20
CLOSERS = ")]}"
PAIRS = {"(": ")", "[": "]", "{": "}"}


class Position:
    def __init__(self, kind: str, path: Path, lang: str, lines: list[str], row: int,
                 col: int, truth: str) -> None:  # fmt: skip
        self.kind, self.path, self.lang, self.row, self.col = kind, path, lang, row, col
        self.lines, self.truth = lines, truth  # the file as the user has it then

    def window(self) -> tuple[str, str]:
        start = max(0, self.row - PREFIX_LINES)
        start -= start % WINDOW_STEP
        line = self.lines[self.row]
        prompt = "".join(self.lines[start : self.row]) + line[: self.col]
        suffix = line[self.col :] + "".join(self.lines[self.row + 1 : self.row + 1 + SUFFIX_LINES])
        return prompt, suffix


def indent_of(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())


def code_rows(lines: list[str], lang: str) -> list[int]:
    """Rows of code: not blank, not a comment, not inside a docstring or block comment."""
    rows, in_doc = [], False
    for r, line in enumerate(lines):
        s = line.strip()
        if lang == "python":
            quotes = s.count('"""') + s.count("'''")
            if in_doc or quotes:
                if quotes % 2 == 1:
                    in_doc = not in_doc
                continue
            if s and not s.startswith("#"):
                rows.append(r)
        else:
            if in_doc:
                in_doc = "*/" not in s
                continue
            if s.startswith("/*"):
                in_doc = "*/" not in s
                continue
            if s and not s.startswith(("//", "*")):
                rows.append(r)
    return rows


def matching(line: str, at: int) -> int | None:
    """Index of the bracket closing the one at ``at`` on the same line (no strings)."""
    depth, quote = 0, None
    for i in range(at, len(line)):
        ch = line[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'`":
            quote = ch
        elif ch in PAIRS:
            depth += 1
        elif ch in CLOSERS:
            depth -= 1
            if depth == 0:
                return i
    return None


def positions(path: Path, lang: str) -> list[Position]:
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    rng = random.Random(f"{SEED}:{path.name}")
    # Positions in one stretch of the file, visited downwards, as a user works through a
    # file: consecutive windows share most lines, so both servers' caches serve them.
    first = rng.randrange(PREFIX_LINES, len(lines) - REGION)
    rows = [r for r in code_rows(lines, lang) if first <= r < first + REGION]
    out: list[Position] = []
    # next line: an indented line in a block, with code above it.
    cands = [r for r in rows if indent_of(lines[r]) > 0 and len(lines[r].strip()) >= 8
             and r - 1 in rows and lines[r].strip()[0] not in CLOSERS]  # fmt: skip
    for r in sorted(rng.sample(cands, PER_KIND)):
        ind = lines[r][: len(lines[r]) - len(lines[r].lstrip())]
        edited = [*lines[:r], ind + "\n", *lines[r + 1 :]]
        out.append(Position("next_line", path, lang, edited, r, len(ind), lines[r].strip()))
    # mid-line: just after an opening bracket, its contents not written yet.
    mids = []
    for r in rows:
        line = lines[r].rstrip("\n")
        for m in re.finditer(r"[(\[]", line):
            close = matching(line, m.start())
            if close is None or close - m.start() < 3:
                continue
            rest = line[close + 1 :]
            if re.search(r"[\w(\[{]", rest):
                mids.append((r, m.start() + 1, close))
                break
    for r, col, close in sorted(rng.sample(mids, PER_KIND)):
        line = lines[r]
        edited = [*lines[:r], line[:col] + line[close:], *lines[r + 1 :]]
        out.append(Position("mid_line", path, lang, edited, r, col, line[col:close]))
    # end of a line: typed up to a word boundary near its middle.
    ends = []
    for r in rows:
        line = lines[r].rstrip("\n")
        content = len(line) - len(line.lstrip())
        cuts = [m.end() for m in re.finditer(r"[\s.(]", line)
                if content + 4 <= m.end() <= len(line) - 6]  # fmt: skip
        if len(line.strip()) >= 24 and cuts:
            ends.append((r, cuts[len(cuts) // 2]))
    for r, col in sorted(rng.sample(ends, PER_KIND)):
        line = lines[r]
        edited = [*lines[:r], line[:col] + "\n", *lines[r + 1 :]]
        out.append(Position("end_of_line", path, lang, edited, r, col, line[col:].rstrip("\n")))
    return sorted(out, key=lambda p: p.row)


# -- the checker: the words, apart from the rules -------------------------------


def below_line(p: Position) -> str:
    return next((ln.strip() for ln in p.lines[p.row + 1 :] if ln.strip()), "")


def defects(p: Position, text: str) -> dict[str, bool]:
    line = p.lines[p.row].rstrip("\n")
    before, rest = line[: p.col], line[p.col :].strip()
    mid = re.search(r"[\w(\[{]", rest) is not None
    out = text.split("\n")
    first = out[0]
    doubled = bool(rest) and (rest in first or any(
        first.rstrip().endswith(rest[:n]) for n in range(3, len(rest) + 1)
    ) or (not mid and first.rstrip().endswith(rest)))  # fmt: skip
    cursor_indent = indent_of(before) if before.strip() else len(before.expandtabs(4))
    opens = (before + first).rstrip().endswith((":", "{", "(", "["))
    nxt = below_line(p)
    leaves = False
    for ln in out[1:]:
        if not ln.strip():
            continue
        ind = indent_of(ln)
        closing = re.fullmatch(r"[)\]}][)\]};,]*", ln.strip()) is not None
        if closing and ln.strip() != nxt:
            if ind < cursor_indent - 8:  # a closer far out of the cursor's block
                leaves = True
            continue
        if ind < cursor_indent or (opens and before.strip() and ind <= cursor_indent):
            leaves = True
    return {
        "multiline_mid": mid and len([x for x in out if x.strip()]) > 1,
        "doubles_rest": doubled,
        "leaves_block": leaves,
        "repeats_below": bool(nxt) and (before + first).strip() == nxt,
    }


def similarity(p: Position, text: str) -> float:
    first = text.split("\n")[0] if text.split("\n")[0].strip() else "".join(text.split("\n")[1:2])
    return difflib.SequenceMatcher(None, first.strip(), p.truth.strip()).ratio()


# -- the three ways ---------------------------------------------------------------------


class Answer:
    def __init__(self, text: str, tokens: int, ms: float, reason: str = "") -> None:
        self.text, self.tokens, self.ms, self.reason = text, tokens, ms, reason


class Vibrant:
    def __init__(self) -> None:
        self.server = start_vibrant()
        self.server.request("vibrant/complete", {"prompt": "def f():\n", "maxTokens": 2})

    def complete(self, p: Position, raw: bool) -> Answer:
        prompt, suffix = p.window()
        params = {"prompt": prompt, "suffix": suffix, "maxTokens": MAX_TOKENS,
                  "temperature": 0, "languageId": p.lang, "filename": p.path.name,
                  "raw": raw}  # fmt: skip
        t0 = time.perf_counter()
        r = self.server.request("vibrant/complete", params)
        ms = (time.perf_counter() - t0) * 1000
        return Answer(r["text"], r["usage"]["completionTokens"], ms, r["stopReason"])

    def close(self) -> None:
        self.server.close()


class LlamaServer:
    def __init__(self) -> None:
        self.proc = start_llama_server(PORT, CONTEXT)

    def complete(self, p: Position) -> Answer:
        prompt, _ = p.window()
        line = p.lines[p.row]
        body = json.dumps({"prompt": prompt, "n_predict": MAX_TOKENS, "temperature": 0,
                           "cache_prompt": True, "n_indent": indent_of(line),
                           "t_max_predict_ms": T_MAX_PREDICT_MS}).encode()  # fmt: skip
        http = urllib.request.Request(
            f"http://127.0.0.1:{PORT}/completion", body, {"Content-Type": "application/json"}
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(http, timeout=600) as resp:
            r = json.loads(resp.read())
        ms = (time.perf_counter() - t0) * 1000
        return Answer(r["content"], int(r["timings"]["predicted_n"]), ms)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


WAYS = ("vibrant", "vibrant raw", "llama-server n_indent")
DEFECTS = ("multiline_mid", "doubles_rest", "leaves_block", "repeats_below")


def summary(rows: list[tuple[Position, Answer]]) -> dict[str, float]:
    shown = [(p, a) for p, a in rows if a.text.strip()]
    out = {"positions": len(rows), "suggested": len(shown) / len(rows)}
    for d in DEFECTS:
        out[d] = sum(defects(p, a.text)[d] for p, a in shown) / max(len(shown), 1)
    out["similarity"] = statistics.mean(similarity(p, a.text) for p, a in rows)
    out["tokens"] = statistics.mean(a.tokens for _, a in rows)
    out["p50"] = statistics.median(a.ms for _, a in rows)
    out["p95"] = pct([a.ms for _, a in rows], 95)
    return out


def main() -> int:
    quick = "--quick" in sys.argv  # a few positions, no llama-server, nothing written
    if not quick and not LLAMA_SERVER.exists():
        print(f"llama-server is not built yet ({LLAMA_SERVER}): bench/bench_typing.py builds it")
        return 1
    todo = [p for path, lang in FILES for p in positions(path, lang)]
    if quick:
        todo = todo[::6]
    vib, ls = Vibrant(), (None if quick else LlamaServer())
    results: dict[str, list[tuple[Position, Answer]]] = {w: [] for w in WAYS}
    reasons: dict[str, int] = {}
    samples: list[str] = []
    try:
        for i, p in enumerate(todo):
            # Alternate which vibrant way goes first: the second finds the prompt cached.
            order = (True, False) if i % 2 else (False, True)
            got = {raw: vib.complete(p, raw) for raw in order}
            results["vibrant"].append((p, got[False]))
            results["vibrant raw"].append((p, got[True]))
            results["llama-server n_indent"].append((p, ls.complete(p) if ls else got[True]))
            reasons[got[False].reason] = reasons.get(got[False].reason, 0) + 1
            print(f"{i + 1}/{len(todo)} {p.path.name}:{p.row + 1} {p.kind} "
                  f"{got[False].reason}: {got[False].text[:60]!r} | raw "
                  f"{got[True].text[:40]!r}", flush=True)  # fmt: skip
            if p.kind == "mid_line" and len(samples) < 3:
                samples.append(f"- `{p.path.name}:{p.row + 1}` `{p.lines[p.row].strip()}` with "
                               f"the cursor after `{p.lines[p.row][: p.col].strip()[-20:]}`: "
                               f"vibrant {got[False].text!r}, raw "
                               f"{got[True].text[:50]!r}…")  # fmt: skip
    finally:
        vib.close()
        if ls is not None:
            ls.close()
    table = []
    sums: dict[tuple[str, str], dict[str, float]] = {}
    for kind in (*KINDS, "all"):
        for way in WAYS:
            rows = [(p, a) for p, a in results[way] if kind in ("all", p.kind)]
            s = sums[(way, kind)] = summary(rows)
            table.append(
                f"| {kind} | {way} | {s['positions']:.0f} | {s['suggested']:.0%} | "
                + " | ".join(f"{s[d]:.0%}" for d in DEFECTS)
                + f" | {s['similarity']:.2f} | {s['tokens']:.1f} | {s['p50']:.0f} | "
                f"{s['p95']:.0f} |"
            )
    v, r, n = (sums[(w, "all")] for w in WAYS)
    v_defects = sum(v[d] for d in DEFECTS)
    n_defects = sum(n[d] for d in DEFECTS)
    bars = [
        "- vibrant with the pipeline, defects: "
        + ", ".join(f"{d} {v[d]:.0%}" for d in DEFECTS)
        + " (bar: 0 % each)",
        f"- a suggestion at {v['suggested']:.0%} of the positions (bar ≥ 80 %)",
        f"- first-line similarity {v['similarity']:.2f} vs raw {r['similarity']:.2f} (bar ≥ raw)",
        f"- tokens per completion {v['tokens']:.1f} vs raw {r['tokens']:.1f}: "
        f"{v['tokens'] / r['tokens']:.2f}× (bar ≤ 0.5×); p50 {v['p50']:.0f} vs {r['p50']:.0f} ms:"
        f" {v['p50'] / r['p50']:.2f}× (bar ≤ 0.6×)",
        f"- defect rates summed: vibrant {v_defects:.0%}, llama-server with n_indent "
        f"{n_defects:.0%} (bar: fewer)",
        "- why vibrant's completions ended: "
        + ", ".join(f"{k} {c}" for k, c in sorted(reasons.items(), key=lambda kv: -kv[1])),
    ]
    body = "\n".join([
        f"Gemma 3 270M Q4_K_M, context {CONTEXT}, {THREADS} threads; {len(todo)} positions "
        f"({PER_KIND} of each kind per file, seed {SEED}) in "
        + ", ".join(f"`{path.name}` ({len(path.read_text().splitlines())} lines)"
                    for path, _ in FILES)
        + ". The VS Code shim's request: whole lines, 256 before, 64 after, maxTokens "
        f"{MAX_TOKENS}, temperature 0, languageId and filename. llama-server: `/completion`, "
        f"`n_indent` = the cursor line's indentation, `t_max_predict_ms` {T_MAX_PREDICT_MS}, "
        "`--cache-reuse 256 -np 1`. Defect rates are of the positions with a suggestion; "
        "similarity and tokens of all positions; ms from sending the request to its answer.",
        "",
        "| kind | way | positions | suggested | multi-line in mid-line | doubles the rest "
        "of the line | leaves the block | repeats the line below | first-line similarity "
        "| tokens | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *table,
        "",
        *bars,
        "",
        "Mid-line examples:",
        *samples,
    ])  # fmt: skip
    print(body)
    if quick:
        return 0
    write_section("Completion quality (issue 20)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
