"""A hostile JSON-RPC client against the real server process: every malformed message
gets the reply JSON-RPC 2.0 and LSP ask for, and the server reads on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from tests.support.helpers import put_cached, tiny_model
from tests.support.helpers import write_registry as write_user_registry
from tests.support.rpc_client import RawLsp, server_env
from vibrant_rpc.app import Vibrant
from vibrant_rpc.cache.manifest import utcnow
from vibrant_rpc.paths import Paths


@pytest_asyncio.fixture
async def raw(paths: Paths) -> AsyncIterator[RawLsp]:
    write_user_registry(paths, [tiny_model("tiny-a", 100)])
    put_cached(Vibrant(paths).cache, "tiny-a", size=1000, last_used=utcnow())
    lsp = await RawLsp.start(server_env(paths.home.parent))
    await lsp.send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": {"capabilities": {}}})  # fmt: skip
    await lsp.reply_to(0)
    await lsp.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
    yield lsp
    await lsp.close()


async def null_id_error(raw: RawLsp) -> dict[str, Any]:
    """The next reply, which must be an error whose id is JSON null (not absent)."""
    reply = await raw.reply_to(None)
    assert "id" in reply and reply["id"] is None, reply
    assert reply["jsonrpc"] == "2.0"
    error: dict[str, Any] = reply["error"]
    return error


async def still_answers(raw: RawLsp, msg_id: int) -> None:
    await raw.send({"jsonrpc": "2.0", "id": msg_id, "method": "vibrant/status"})
    assert (await raw.reply_to(msg_id))["result"]["state"] == "unloaded"


async def test_unknown_ids_are_answered_with_id_null(raw: RawLsp) -> None:
    await raw.send_bytes(b"{not json")
    assert (await null_id_error(raw))["code"] == -32700
    await raw.send_bytes(b'"just a string"')
    assert (await null_id_error(raw))["code"] == -32600
    await raw.send({"jsonrpc": "2.0", "id": {"x": 1}, "method": "vibrant/status"})
    assert (await null_id_error(raw))["code"] == -32600
    await raw.send({"jsonrpc": "2.0", "id": True, "method": "vibrant/status"})
    assert (await null_id_error(raw))["code"] == -32600
    await still_answers(raw, 1)


async def test_the_specifications_invalid_requests(raw: RawLsp) -> None:
    # JSON-RPC 2.0, section 7: each of these is answered with -32600 and id null.
    for message in ({}, {"foo": "boo"}, {"jsonrpc": "2.0", "method": 1, "params": "bar"}):
        await raw.send(message)  # type: ignore[arg-type]
        error = await null_id_error(raw)
        assert error["code"] == -32600 and error["data"]["kind"] == "InvalidRequest", message
    # params that aren't an object: invalid params, answered by the request's id
    await raw.send({"jsonrpc": "2.0", "id": 2, "method": "vibrant/status", "params": "bar"})
    assert (await raw.reply_to(2))["error"]["code"] == -32602
    # A batch (not supported) gets one -32600, not one per member and not silence.
    batch = [{"jsonrpc": "2.0", "id": 3, "method": "vibrant/status"},
             {"jsonrpc": "2.0", "id": 4, "method": "vibrant/status"}]  # fmt: skip
    await raw.send_bytes(json.dumps(batch).encode())
    assert (await null_id_error(raw))["code"] == -32600
    await still_answers(raw, 5)
    assert not [m for m in raw.seen if m.get("id") in (3, 4)]


async def test_an_unknown_method_is_not_found_with_or_without_params(raw: RawLsp) -> None:
    await raw.send({"jsonrpc": "2.0", "id": 1, "method": "vibrant/noSuchThing"})
    error = (await raw.reply_to(1))["error"]
    assert error["code"] == -32601 and error["data"]["kind"] == "MethodNotFound"
    await raw.send({"jsonrpc": "2.0", "id": 2, "method": "textDocument/madeUp", "params": {}})
    assert (await raw.reply_to(2))["error"]["code"] == -32601
    await raw.send({"jsonrpc": "2.0", "id": 4, "method": "foo"})  # no params at all
    error = (await raw.reply_to(4))["error"]
    assert error["code"] == -32601 and "params" not in error["message"], error
    await raw.send({"jsonrpc": "2.0", "method": "vibrant/noSuchNotification"})
    await still_answers(raw, 3)
    assert not [m for m in raw.seen if "error" in m and m.get("id") is None]


async def test_a_request_method_sent_as_a_notification_does_nothing(
    raw: RawLsp, paths: Paths
) -> None:
    model = paths.models / "tiny-a.gguf"
    await raw.send({"jsonrpc": "2.0", "method": "vibrant/removeModel",
                    "params": {"modelId": "tiny-a"}})  # fmt: skip
    await raw.send({"jsonrpc": "2.0", "method": "vibrant/removeModel",
                    "params": {"modelId": "no-such-model"}})  # fmt: skip
    # Give a wrongly run removal (on a worker thread) every chance to happen.
    for msg_id in range(1, 20):
        await still_answers(raw, msg_id)
        await asyncio.sleep(0.1)
    assert model.is_file() and Vibrant(paths).cache.get("tiny-a") is not None
    assert not [m for m in raw.seen if m.get("method") == "window/showMessage"]


async def test_requests_after_shutdown_are_invalid(raw: RawLsp) -> None:
    await raw.send({"jsonrpc": "2.0", "id": 1, "method": "shutdown"})
    assert (await raw.reply_to(1))["result"] is None
    await raw.send({"jsonrpc": "2.0", "id": 2, "method": "vibrant/status"})
    error = (await raw.reply_to(2))["error"]
    assert error["code"] == -32600 and "shutting down" in error["message"]
    await raw.send({"jsonrpc": "2.0", "method": "exit"})
    assert await raw.proc.wait() == 0


async def test_bad_framing_gets_a_reply_and_the_server_resynchronises(raw: RawLsp) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 99, "method": "vibrant/status"}).encode()
    # After each, the server skips to the next Content-Length header: the next message.
    for length in (b"-5", b"abc", b"1e2", b"18446744073709551616", b""):
        await raw.send_bytes(body, header=b"Content-Length: " + length + b"\r\n\r\n")
        error = await null_id_error(raw)
        assert error["code"] == -32700 and "Content-Length" in error["message"], length
    await still_answers(raw, 1)
    await raw.send_bytes(body, header=b"Content-Type: application/json\r\n\r\n")  # none at all
    assert "missing" in (await null_id_error(raw))["message"]
    # None of those bodies ran, and the next well-framed message is answered.
    await still_answers(raw, 2)
    assert not [m for m in raw.seen if m.get("id") == 99]
    # A length too short: the body's rest is garbage; the message glued after it is read.
    await raw.send_bytes(body, header=b"Content-Length: %d\r\n\r\n" % (len(body) - 4))
    assert (await null_id_error(raw))["code"] == -32700
    await still_answers(raw, 3)
    # An absurd length announced, nothing sent: refused at once, not waited for.
    await raw.send_bytes(b"", header=b"Content-Length: 99999999999\r\n\r\n")
    assert (await null_id_error(raw))["code"] == -32600
    await still_answers(raw, 4)
    assert raw.proc.returncode is None


async def test_text_that_is_not_whole_characters(raw: RawLsp) -> None:
    # Neovim cut a UTF-8 sequence: the request is answered by its id, not left waiting.
    cut = "é 中文 😀".encode()[:-2]
    await raw.send_bytes(
        b'{"jsonrpc": "2.0", "id": 1, "method": "vibrant/complete", "params": {"prompt": "'
        + cut
        + b'"}}'
    )
    error = (await raw.reply_to(1))["error"]
    assert error["code"] == -32602 and "UTF-8" in error["message"]
    # VS Code split a surrogate pair: -32602 naming the field.
    await raw.send_bytes(
        b'{"jsonrpc": "2.0", "id": 2, "method": "vibrant/complete",'
        b' "params": {"prompt": "x", "suffix": "\\ud83d tail"}}'
    )
    error = (await raw.reply_to(2))["error"]
    assert error["code"] == -32602 and error["data"]["field"] == "suffix", error
    await still_answers(raw, 3)
