"""Cases for the shims' ring of context chunks (editors/nvim/lua/vibrant/ring.lua and
editors/vscode/src/ring.ts), judged here, so that both shims are held to the same answers;
and the files of the end-to-end tests in each editor, with the chunks they must send.

Each scenario starts an empty ring with ``opts`` and runs ``ops`` in order:
``["pick", lines, filename]`` answers ``{"added": filename}`` or ``{"why": reason}``;
``["context", window_text]`` answers the chunks sent, ``[[filename, text], ...]``;
``["similarity", a, b]`` answers a number. After the ops: ``evicted``.
"""

from __future__ import annotations

from typing import Any


def block(name: str, n: int = 32) -> list[str]:
    """n distinct lines of code, as in a file called ``name``."""
    return [f"    {name}_{i} = compute({i}, '{name}')" for i in range(n)]


def text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


A = block("alpha")
A_ONE_CHANGED = [*A[:5], "    changed = True", *A[6:]]  # 31 of 33 distinct lines shared
A_FOUR_CHANGED = [*A[:28], *(f"    other_{i} = 0" for i in range(4))]  # 28 of 36
B = block("beta")
C = block("gamma")

SCENARIOS: list[dict[str, Any]] = [
    {  # 0: a near duplicate replaces the chunk it is like; a less similar one is kept too
        "opts": {},
        "ops": [
            ["pick", A, "src/a.py"],
            ["pick", B, "src/b.py"],
            ["pick", A_ONE_CHANGED, "src/a2.py"],
            ["pick", A_FOUR_CHANGED, "src/a3.py"],
            ["context", "nothing here\n"],
            ["similarity", A, A_ONE_CHANGED],
            ["similarity", A, A_FOUR_CHANGED],
            ["similarity", A, B],
            ["similarity", ["x", "", "y  "], ["y", "x", "x"]],
        ],
    },
    {  # 1: the same text again, too few lines, only blank ones
        "opts": {},
        "ops": [
            ["pick", A, "a.py"],
            ["pick", A, "elsewhere.py"],
            ["pick", A[:2], "a.py"],
            ["pick", ["", "   ", "\t"], "a.py"],
            ["context", ""],
        ],
    },
    {  # 2: the ring is bounded: the oldest go first, the rest stay oldest first
        "opts": {"chunks": 16},
        "ops": [*(["pick", block(f"f{i}", 5), f"f{i}.py"] for i in range(20)), ["context", ""]],
    },
    {  # 3: a chunk mostly in the window around the cursor is evicted (for good)
        "opts": {},
        "ops": [
            ["pick", A, "a.py"],
            ["pick", B, "b.py"],
            ["pick", C, "c.py"],
            # 17 of B's 32 lines in the window (over half): B goes; 16 of C's (half): C stays.
            ["context", text(["def f():", *B[:17], *C[10:26], "    return 1"])],
            ["context", "unrelated\n"],
        ],
    },
    {  # 4: a chunk is its text's first lines: at most chunk_lines, and whole lines that fit
        "opts": {"chunk_lines": 32},
        "ops": [
            ["pick", block("long", 50), "long.py"],
            ["pick", ["x" * 999] * 32, "wide.txt"],  # 1,000 with its newline: 16 fit 16,000
            ["pick", ["y" * 16000, "z", "z"], "one_line.txt"],  # the first line alone is over
            ["context", ""],
        ],
    },
    {  # 5: names: none is "untitled", a long one keeps its end
        "opts": {},
        "ops": [
            ["pick", A, ""],
            ["pick", B, "d/" * 700 + "end.py"],
            ["context", ""],
        ],
    },
    {  # 6: switched off
        "opts": {"chunks": 0},
        "ops": [["pick", A, "a.py"], ["context", ""]],
    },
]


# The end-to-end tests' files, in the editor's working directory or workspace: other code in
# pkg/helpers.py (chunks of it are context) and the cursor's file pkg/models.py (mid-line,
# after "print(").
HELPERS = [
    '"""Helpers for greeting people."""',
    *(line for i in range(20) for line in (f"def helper_{i}(value):", f"    return value + {i}")),
    *(f"LIMIT_{i} = {i * 10}" for i in range(20)),
]
MODELS = ["from pkg.helpers import helper_1", "", "", "def greet(name):", "    print(, name)",
          "", "", "def main():", '    greet("world")']  # fmt: skip


def sent_context() -> list[list[str]]:
    """The chunks a shim sends from pkg/models.py after these steps: pkg/helpers.py entered
    (its first 32 lines), line 5 changed and saved (a chunk nearly the same, which replaces
    the first), lines 34-38 yanked or copied, left with the cursor on line 34 (lines 18-49),
    and pkg/models.py entered (all of it: the window holds it, so it is not sent)."""
    saved = [*HELPERS[:4], HELPERS[4] + "  # changed", *HELPERS[5:32]]
    return [
        ["pkg/helpers.py", text(saved)],
        ["pkg/helpers.py", text(HELPERS[33:38])],
        ["pkg/helpers.py", text(HELPERS[17:49])],
    ]


def check(results: list[dict[str, Any]]) -> None:
    """What a shim answered for SCENARIOS (one {"answers": [...], "evicted": n} each)."""
    assert len(results) == len(SCENARIOS)
    r = [s["answers"] for s in results]
    evicted = [s["evicted"] for s in results]

    # 0: A' replaced A; A'' is less than 0.9 like either and stays.
    assert r[0][:4] == [
        {"added": "src/a.py"},
        {"added": "src/b.py"},
        {"added": "src/a2.py"},
        {"added": "src/a3.py"},
    ]
    assert r[0][4] == [
        ["src/b.py", text(B)],
        ["src/a2.py", text(A_ONE_CHANGED)],
        ["src/a3.py", text(A_FOUR_CHANGED)],
    ]
    assert abs(r[0][5] - 31 / 33) < 1e-9
    assert abs(r[0][6] - 28 / 36) < 1e-9
    assert r[0][7] == 0
    assert r[0][8] == 1  # sets of non-blank lines, trailing blanks stripped
    assert evicted[0] == 1

    assert r[1][:4] == [{"added": "a.py"}, {"why": "held"}, {"why": "small"}, {"why": "blank"}]
    assert r[1][4] == [["a.py", text(A)]]

    kept = r[2][-1]
    assert [name for name, _ in kept] == [f"f{i}.py" for i in range(4, 20)]
    assert kept[0][1] == text(block("f4", 5))

    assert r[3][3] == [["a.py", text(A)], ["c.py", text(C)]]
    assert r[3][4] == r[3][3]  # B stays evicted once the window moved on
    assert evicted[3] == 1

    chunks = dict((name, body) for name, body in r[4][-1])
    assert chunks["long.py"] == text(block("long", 50)[:32])
    assert chunks["wide.txt"] == text(["x" * 999] * 16)
    assert r[4][2] == {"why": "small"}
    assert "one_line.txt" not in chunks

    assert [name for name, _ in r[5][-1]] == ["untitled", ("d/" * 700 + "end.py")[-1000:]]

    assert r[6] == [{"why": "off"}, []]
