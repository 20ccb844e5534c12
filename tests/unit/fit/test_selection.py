from __future__ import annotations

from pathlib import Path

import pytest

from vibrant_rpc.errors import InsufficientRamError
from vibrant_rpc.fit.ram import cgroup_memory, read_memory
from vibrant_rpc.fit.selection import select_model
from vibrant_rpc.registry import Registry
from vibrant_rpc.units import GiB


@pytest.mark.parametrize(
    ("ram_gib", "expected"),
    [
        (6, "qwen2.5-coder-3b-q4"),
        (10, "qwen2.5-coder-3b-q4"),
        (12, "qwen2.5-coder-7b-q5"),
        (16, "qwen2.5-coder-7b-q5"),
        (20, "qwen2.5-coder-14b-q5"),
        (24, "qwen2.5-coder-14b-q8"),
        (64, "qwen2.5-coder-14b-q8"),
    ],
)
def test_tiers(ram_gib: int, expected: str) -> None:
    assert select_model(Registry.embedded(), ram_gib * GiB).model_id == expected


def test_too_little_ram_says_what_the_smallest_needs() -> None:
    with pytest.raises(InsufficientRamError) as info:
        select_model(Registry.embedded(), 5 * GiB)
    err = info.value
    assert "3.0 GiB usable" in err.message
    assert "3B Q4_K_M" in err.message and "needs 3.9 GiB" in err.message
    assert err.details["smallestModelId"] == "qwen2.5-coder-3b-q4"
    assert err.code == -31002


def test_reason_in_words_and_fits() -> None:
    s = select_model(Registry.embedded(), int(15.5 * GiB))
    assert s.reason == (
        "15.5 GiB total, 13.5 GiB usable; chose 7B Q5_K_M; the next, 14B Q5_K_M, needs 17.6 GiB"
    )
    assert s.fits == ["qwen2.5-coder-7b-q5", "qwen2.5-coder-3b-q4"]
    assert s.usable_ram_bytes == int(13.5 * GiB)


def test_recommended_preferred_over_larger_unrecommended() -> None:
    from vibrant_rpc.registry import parse_entries

    big, _ = parse_entries(
        b'{"models":[{"id":"big","hf_repo":"a/b","filename":"f","ram_required_mb":8000}]}', "x"
    )
    s = select_model([*Registry.embedded(), *big], 12 * GiB)
    assert s.model_id == "qwen2.5-coder-7b-q5"
    s = select_model([*Registry.embedded(), *big], 10 * GiB)
    assert s.model_id == "qwen2.5-coder-3b-q4"


def test_warning_when_memory_free_now_is_short() -> None:
    s = select_model(Registry.embedded(), 16 * GiB, available_bytes=9 * GiB)
    assert s.warning is not None and "Only 9.0 GiB of memory is free" in s.warning
    assert select_model(Registry.embedded(), 16 * GiB, available_bytes=14 * GiB).warning is None


def _fake_cgroup(tmp_path: Path, limit: str, usage: str, v1: bool = False) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "cgroup"
    root = tmp_path / "sys"
    if v1:
        proc.write_text("12:cpu,cpuacct:/x\n5:memory:/docker/abc\n")
        d = root / "memory" / "docker" / "abc"
        d.mkdir(parents=True)
        (d / "memory.limit_in_bytes").write_text(limit)
        (d / "memory.usage_in_bytes").write_text(usage)
    else:
        proc.write_text("0::/user.slice/app\n")
        d = root / "user.slice" / "app"
        d.mkdir(parents=True)
        (d / "memory.max").write_text(limit)
        (d / "memory.current").write_text(usage)
        (root / "user.slice" / "memory.max").write_text("max")
    return proc, root


def test_cgroup_v2_limit_caps_total(tmp_path: Path) -> None:
    proc, root = _fake_cgroup(tmp_path, str(8 * GiB), str(1 * GiB))
    assert cgroup_memory(proc, root) == (8 * GiB, 1 * GiB)
    mem = read_memory(proc, root)
    assert mem.total_bytes == 8 * GiB
    assert mem.available_bytes <= 7 * GiB
    s = select_model(Registry.embedded(), mem.total_bytes)
    assert s.model_id == "qwen2.5-coder-3b-q4"


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    proc, root = _fake_cgroup(tmp_path, str(8 * GiB), "0", v1=True)
    assert read_memory(proc, root).total_bytes == 8 * GiB
    proc2, root2 = _fake_cgroup(tmp_path / "u", str(2**63 - 4096), "0", v1=True)
    assert cgroup_memory(proc2, root2) == (None, None)
    proc3, root3 = _fake_cgroup(tmp_path / "m", "max", "0")
    assert cgroup_memory(proc3, root3)[0] is None
