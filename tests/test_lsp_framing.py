"""LSP frames read defensively: bounded, and a broken frame costs only itself (issue 26 #4).

The subprocess tests in test_hostile.py drive ``editloop lsp`` itself; these feed the reader the
byte streams a broken client sends, split at every awkward place.
"""

import asyncio
import json

import pytest

from editloop.lsp.framing import FrameReader


def frame(message: dict, length_error: int = 0) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % (len(body) + length_error) + body


def read_all(stream: bytes, chunk: int, max_bytes: int = 10_000) -> tuple[list[dict | bytes], list[str]]:
    """Every body the reader yields from ``stream`` fed ``chunk`` bytes at a time, and its warnings."""
    pieces = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    warnings: list[str] = []

    async def read() -> bytes:
        return pieces.pop(0) if pieces else b""

    async def run() -> list[dict | bytes]:
        reader = FrameReader(read, max_bytes, warnings.append)
        bodies = []
        while (body := await reader.next()) is not None:
            try:
                bodies.append(json.loads(body))
            except ValueError:
                bodies.append(body)
        return bodies

    return asyncio.run(run()), warnings


A = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"text": "Content-Length: 3\\r\\n"}}
B = {"jsonrpc": "2.0", "id": 2, "method": "shutdown"}
C = {"jsonrpc": "2.0", "method": "exit"}
CHUNKS = [1, 7, 64, 100_000]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_good_frames_pass_whole_however_they_are_split(chunk: int) -> None:
    stream = (
        frame(A) + b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" + frame(B)[0:] + frame(C)
    )
    bodies, warnings = read_all(stream, chunk)
    assert bodies == [A, B, C] and warnings == []


@pytest.mark.parametrize("chunk", CHUNKS)
def test_pygls_headers_with_a_content_type_after_the_length(chunk: int) -> None:
    body = json.dumps(B).encode()
    typed = b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" % len(
        body
    )
    bodies, warnings = read_all(typed + body + frame(C), chunk)
    assert bodies == [B, C] and warnings == []


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_length_too_long_ends_at_the_next_header(chunk: int) -> None:
    bodies, warnings = read_all(frame(A, +25) + frame(B) + frame(C), chunk)
    assert bodies == [A, B, C]
    assert any("next message began" in w for w in warnings)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_length_too_short_loses_that_message_only(chunk: int) -> None:
    bodies, warnings = read_all(frame(A, -9) + frame(B) + frame(C), chunk)
    assert bodies[-2:] == [B, C] and A not in bodies
    assert any("skipped" in w for w in warnings)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_an_oversized_message_is_skipped_without_reading_it_into_memory(chunk: int) -> None:
    huge = frame({"jsonrpc": "2.0", "method": "didOpen", "params": {"text": "x" * 50_000}})
    bodies, warnings = read_all(huge + frame(B), chunk, max_bytes=10_000)
    assert bodies == [B]
    assert any("over the limit of 10000" in w for w in warnings)


def test_an_absurd_length_and_garbage_then_good_frames() -> None:
    stream = b"Content-Length: 999999999999\r\n\r\n{" + b"garbage\r\n\r\nmore" + frame(B) + frame(C)
    bodies, warnings = read_all(stream, 5)
    assert bodies == [B, C]
    assert sum("over the limit" in w for w in warnings) == 1


def test_the_end_of_input_inside_a_message_ends_the_reader() -> None:
    bodies, warnings = read_all(frame(B) + frame(C)[:-3], 10)
    assert bodies == [B] and any("ended" in w for w in warnings)
