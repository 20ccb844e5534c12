from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import GEMMA_ARCH, tiny_model, write_registry
from vibrant_rpc.errors import ModelNotFoundError
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import Registry

SHA = "a" * 64


def test_embedded_registry_has_the_real_file_layout() -> None:
    r = Registry.embedded()
    ids = [m.id for m in r]
    assert ids == [
        "qwen2.5-coder-3b-q4",
        "qwen2.5-coder-7b-q5",
        "qwen2.5-coder-14b-q5",
        "qwen2.5-coder-14b-q8",
    ]
    three = r.get("qwen2.5-coder-3b-q4")
    assert [f.filename for f in three.files] == ["qwen2.5-coder-3b-instruct-q4_k_m.gguf"]
    assert three.revision == "f74adce6aa16316c625447af059dbebe4983757c"
    assert three.local_filenames() == ["qwen2.5-coder-3b-q4.gguf"]
    seven = r.get("qwen2.5-coder-7b-q5")
    assert seven.is_split and len(seven.files) == 2
    assert seven.local_filenames()[1] == "qwen2.5-coder-7b-q5-00002-of-00002.gguf"
    q8 = r.get("qwen2.5-coder-14b-q8")
    assert (q8.file_size_mb, q8.ram_required_mb) == (15700, 22000)


def test_user_entries_add_and_override(paths: Paths) -> None:
    write_registry(
        paths,
        [
            tiny_model("mine"),
            {
                "id": "qwen2.5-coder-3b-q4",
                "hf_repo": "me/fork",
                "filename": "x.gguf",
                "ram_required_mb": 1,
            },
        ],
    )
    r = Registry.load(paths.user_registry)
    assert r.get("mine").name == "Tiny mine"
    assert r.get("qwen2.5-coder-3b-q4").hf_repo == "me/fork"
    assert len(r) == 5 and not r.problems


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ({"id": "a/b"}, "id", "path separator"),
        ({"id": "a\\b"}, "id", "path separator"),
        ({"id": ".."}, "id", "'..'"),
        ({"id": ""}, "id", "empty"),
        ({"id": "bad\x07"}, "id", "control character"),
        ({"filename": "../../etc/passwd"}, "filename", "path separator"),
        ({"filename": "x\x00.gguf"}, "filename", "control character"),
        ({"hf_repo": "justone"}, "hf_repo", "not 'owner/name'"),
        ({"hf_repo": "a/b/c"}, "hf_repo", "not 'owner/name'"),
        ({"sha256": "abc"}, "sha256", "not a SHA-256"),
        ({"sha256": "A" * 64}, "sha256", "not a SHA-256"),
        ({"ram_required_mb": -1}, "ram_required_mb", ">= 0"),
        ({"file_size_mb": -5}, "file_size_mb", ">= 0"),
        ({"ram_required_mb": "lots"}, "ram_required_mb", "Expected `int`"),
        ({"colour": "red"}, "colour", "unknown field"),
        (
            {"filename": None, "files": [{"filename": "a.gguf", "size_bytes": -1}]},
            "files[0].size_bytes",
            ">= 0",
        ),
        (
            {"filename": None, "files": [{"filename": "a/b.gguf"}]},
            "files[0].filename",
            "path separator",
        ),
        (
            {"filename": None, "files": [{"filename": "a.gguf", "sha256": "zz"}]},
            "files[0].sha256",
            "not a SHA-256",
        ),
        ({"architecture": {**GEMMA_ARCH, "layers": 0}}, "architecture.layers", ">= 1"),
        ({"architecture": {**GEMMA_ARCH, "heads": "4"}}, "architecture.heads", "Expected `int`"),
        ({"architecture": {**GEMMA_ARCH, "layer": 3}}, "architecture.layer", "unknown field"),
        (
            {"architecture": {k: v for k, v in GEMMA_ARCH.items() if k != "vocab"}},
            "architecture.vocab",
            "missing required field",
        ),
        ({"architecture": {**GEMMA_ARCH, "kv_heads": 3}}, "architecture.kv_heads", "divide"),
        ({"architecture": {**GEMMA_ARCH, "architecture": ""}}, "architecture.architecture", "not"),
        ({"architecture": 7}, "architecture", "Expected `object | null`"),
    ],
)
def test_bad_entries_are_refused_naming_file_entry_field(
    paths: Paths, entry: dict[str, object], field: str, words: str
) -> None:
    bad = tiny_model("broken")
    bad.update(entry)
    if bad.get("filename") is None:
        bad.pop("filename", None)
    write_registry(paths, [tiny_model("fine"), bad])
    r = Registry.load(paths.user_registry)
    assert len(r.problems) == 1, r.problems
    msg = r.problems[0].message
    assert str(paths.user_registry) in msg
    assert "entry 2" in msg
    assert f"field '{field}'" in msg
    assert words in msg
    # the good entry and the embedded ones survive
    assert "fine" in r and "qwen2.5-coder-7b-q5" in r


def test_architecture_facts_in_the_registry(paths: Paths) -> None:
    embedded = Registry.embedded()
    assert all(m.architecture is not None for m in embedded)
    seven = embedded.get("qwen2.5-coder-7b-q5").architecture
    assert seven is not None and (seven.layers, seven.heads, seven.kv_heads) == (28, 28, 4)
    write_registry(paths, [tiny_model("gemma", architecture=GEMMA_ARCH), tiny_model("bare")])
    r = Registry.load(paths.user_registry)
    assert not r.problems
    gemma = r.get("gemma").architecture
    assert gemma is not None and gemma.sliding_window == 512 and gemma.tied_embeddings
    assert r.get("bare").architecture is None


def test_missing_required_field(paths: Paths) -> None:
    write_registry(paths, [{"id": "x", "hf_repo": "a/b", "filename": "f.gguf"}])
    r = Registry.load(paths.user_registry)
    assert "field 'ram_required_mb'" in r.problems[0].message
    write_registry(paths, [{"id": "x", "hf_repo": "a/b", "ram_required_mb": 1}])
    r = Registry.load(paths.user_registry)
    assert "either 'filename' or 'files' is required" in r.problems[0].message


@pytest.mark.parametrize("content", ["{not json", '{"models": 3}', "[]", ""])
def test_broken_file_never_hides_the_embedded_registry(paths: Paths, content: str) -> None:
    paths.home.mkdir(parents=True)
    paths.user_registry.write_text(content)
    r = Registry.load(paths.user_registry)
    assert len(r) == 4
    assert len(r.problems) == 1 and "not a registry file" in r.problems[0].message


def test_vibrant_registry_env_names_the_file(
    paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere.json"
    other.write_text(
        '{"models": [{"id": "z", "hf_repo": "a/b", "filename": "z.gguf", "ram_required_mb": 1}]}'
    )
    monkeypatch.setenv("VIBRANT_REGISTRY", str(other))
    assert "z" in Registry.load(Paths.from_env().user_registry)


def test_unknown_id_suggests_nearest() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        Registry.embedded().get("qwen2.5-coder-7b")
    assert "qwen2.5-coder-7b-q5" in info.value.details["suggestions"]
    assert info.value.code == -31001
    assert "Did you mean" in str(info.value)
