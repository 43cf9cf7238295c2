"""RemoteBackend against a real llama-cpp-python server running the tiny GGUF on a free port."""

import dataclasses
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from editloop.errors import BackendError, ModelError
from editloop.models.backend import GenerationParams
from editloop.models.llama import LlamaBackend
from editloop.models.registry import ModelVersion
from editloop.models.remote import RemoteBackend

PREFIX, SUFFIX = "import os\n\n\ndef main(args):\n    ", "\n    return 0\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_version: ModelVersion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("wb")
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_version.gguf_path("q8_0"))]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "256", "--n_threads", "2"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not answer at {url} within {timeout_s} s")


def remote_for(url: str, version: ModelVersion, timeout_s: float = 30) -> RemoteBackend:
    tokenizer = version.tokenizer_path()
    assert tokenizer is not None
    return RemoteBackend(url, "tiny", tokenizer, version.manifest.fim, version.name, 256, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def remote(server_url: str, tiny_version: ModelVersion) -> Iterator[RemoteBackend]:
    backend = remote_for(server_url, tiny_version)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def local(tiny_version: ModelVersion) -> Iterator[LlamaBackend]:
    backend = LlamaBackend.from_version(tiny_version, quant="q8_0", n_threads=2)
    yield backend
    backend.close()


def fim_prompt(backend: RemoteBackend | LlamaBackend, prefix: str, suffix: str) -> list[int]:
    fim = backend.fim
    p, s, m = (backend.special_id(t) for t in (fim.prefix, fim.suffix, fim.middle))
    assert p is not None and s is not None and m is not None
    return [p, *backend.tokenize(prefix), s, *backend.tokenize(suffix), m]


def test_local_tokenizer_agrees_with_llama_cpp(remote: RemoteBackend, local: LlamaBackend) -> None:
    for text in (PREFIX, SUFFIX, "x = 'héllo' # 名前 🙂", "<|fim_prefix|> stays text"):
        assert remote.tokenize(text) == local.tokenize(text)
    for token in (*remote.fim.special_tokens(), "def", "<|nope|>"):
        assert remote.special_id(token) == local.special_id(token)


def test_greedy_matches_the_local_backend(remote: RemoteBackend, local: LlamaBackend) -> None:
    prompt = fim_prompt(remote, PREFIX, SUFFIX)
    [theirs] = remote.generate(prompt, GenerationParams(n=1, max_tokens=16)).generations
    [ours] = local.generate(prompt, GenerationParams(n=1, max_tokens=16)).generations
    assert theirs.text == ours.text
    assert theirs.token_ids == ours.token_ids
    assert theirs.finish_reason == ours.finish_reason == "length"
    assert theirs.logprobs == pytest.approx(ours.logprobs, abs=1e-4)


def test_n_candidates_with_logprobs(remote: RemoteBackend, local: LlamaBackend) -> None:
    prompt = fim_prompt(remote, "class Stack:\n    def push(self, item):\n        ", "\n")
    params = GenerationParams(n=3, max_tokens=12, temperature=1.0, seed=5)
    result = remote.generate(prompt, params)
    assert len(result.generations) == 3
    # llama-cpp-python's server ignores n: one greedy request plus sampled ones until there are 3.
    assert result.extra["requests"] == 2
    [greedy] = local.generate(prompt, GenerationParams(max_tokens=12)).generations
    assert result.generations[0].text == greedy.text
    for g in result.generations:
        assert g.finish_reason in ("stop", "length")
        assert len(g.logprobs) == len(g.token_ids) > 0
        assert all(lp <= 0 for lp in g.logprobs)
    assert len({g.text for g in result.generations}) >= 2
    again = remote.generate(prompt, params)
    assert [g.text for g in again.generations] == [g.text for g in result.generations]


def test_stop_strings_cut_text_and_tokens(remote: RemoteBackend) -> None:
    prompt = fim_prompt(remote, "for i in range(10):\n    ", "\n")
    sampled = GenerationParams(n=2, max_tokens=24, temperature=1.0, seed=11)
    full = remote.generate(prompt, sampled).generations[1]
    assert len(set(full.text)) >= 4, full.text
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    cut = full.text.find(stop)
    stopped = remote.generate(prompt, dataclasses.replace(sampled, stop=(stop,))).generations[1]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    assert len(stopped.logprobs) == len(stopped.token_ids)


def test_cancel_and_deadline_return_without_waiting(remote: RemoteBackend) -> None:
    prompt = fim_prompt(remote, PREFIX, SUFFIX)
    cancel = threading.Event()
    cancel.set()
    result = remote.generate(prompt, GenerationParams(n=2, max_tokens=8, cancel=cancel))
    assert [g.finish_reason for g in result.generations] == ["cancelled"] * 2
    started = time.monotonic()
    late = remote.generate(prompt, GenerationParams(n=2, max_tokens=8, deadline=time.monotonic() - 1))
    assert [g.finish_reason for g in late.generations] == ["deadline"] * 2
    assert time.monotonic() - started < 1


def test_server_down_is_a_backend_error(tiny_version: ModelVersion) -> None:
    backend = remote_for(f"http://127.0.0.1:{free_port()}", tiny_version, timeout_s=2)
    try:
        with pytest.raises(BackendError, match="cannot reach") as info:
            backend.generate(fim_prompt(backend, PREFIX, SUFFIX), GenerationParams(max_tokens=4))
        assert info.value.code == "backend_unavailable"
    finally:
        backend.close()


@contextmanager
def fake_server(status: int, body: bytes, delay_s: float = 0.0) -> Iterator[str]:
    """A stdlib HTTP server that answers every POST with ``status`` and ``body``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay_s)
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up waiting, which is what some tests check

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "status, body, message",
    [(500, b'{"error": "boom"}', "answered 500"), (200, b"not json", "OpenAI"), (200, b"{}", "OpenAI")],
)
def test_broken_replies_are_backend_errors(
    tiny_version: ModelVersion, status: int, body: bytes, message: str
) -> None:
    with fake_server(status, body) as url:
        backend = remote_for(url, tiny_version, timeout_s=5)
        try:
            with pytest.raises(BackendError, match=message):
                backend.generate(fim_prompt(backend, PREFIX, SUFFIX), GenerationParams(max_tokens=4))
        finally:
            backend.close()


def test_a_slow_server_is_left_behind_on_cancel_and_deadline(tiny_version: ModelVersion) -> None:
    with fake_server(200, b'{"choices": []}', delay_s=3) as url:
        backend = remote_for(url, tiny_version, timeout_s=10)
        try:
            prompt = fim_prompt(backend, PREFIX, SUFFIX)
            cancel = threading.Event()
            threading.Timer(0.2, cancel.set).start()
            started = time.monotonic()
            result = backend.generate(prompt, GenerationParams(n=2, max_tokens=4, cancel=cancel))
            assert [g.finish_reason for g in result.generations] == ["cancelled"] * 2
            deadline = time.monotonic() + 0.3
            result = backend.generate(prompt, GenerationParams(n=2, max_tokens=4, deadline=deadline))
            assert [g.finish_reason for g in result.generations] == ["deadline"] * 2
            assert time.monotonic() - started < 1.5
            with pytest.raises(BackendError, match="did not answer"):
                remote_for(url, tiny_version, timeout_s=0.3).generate(prompt, GenerationParams(max_tokens=4))
        finally:
            backend.close()


def test_tokenizer_path_must_exist(tiny_version: ModelVersion) -> None:
    missing = Path("/nonexistent/tokenizer.json")
    with pytest.raises(ModelError, match="tokenizer"):
        RemoteBackend("http://x", "m", missing, tiny_version.manifest.fim, "v", 256)


@contextmanager
def vllm_like_proxy(upstream: str) -> Iterator[tuple[str, list[dict]]]:
    """Forwards to the real llama.cpp server, records each request body, and answers a body that
    carries ``suffix`` the way vLLM's /v1/completions does: 400, "suffix is not currently supported"."""
    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw)
            bodies.append(body)
            if "suffix" in body:
                status, reply = 400, json.dumps({"error": {"message": "suffix is not currently supported"}})
                data = reply.encode()
            else:
                headers = {"Content-Type": "application/json"}
                forwarded = httpx.post(upstream + self.path, content=raw, headers=headers, timeout=60)
                status, data = forwarded.status_code, forwarded.content
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_the_fim_prompt_is_built_here_and_suffix_is_never_sent(
    server_url: str, tiny_version: ModelVersion
) -> None:
    from editloop.completion.types import CompletionRequest
    from editloop.eval.engine import engine_for

    fim = tiny_version.manifest.fim
    with vllm_like_proxy(server_url) as (url, bodies):
        backend = remote_for(url, tiny_version)
        try:
            params = GenerationParams(n=3, max_tokens=8, temperature=1.0, seed=2)
            result = backend.generate(fim_prompt(backend, PREFIX, SUFFIX), params)
            engine_result = engine_for(backend).complete(
                CompletionRequest(prefix=PREFIX, suffix=SUFFIX, n=2, mode="block", max_tokens=8)
            )
        finally:
            backend.close()
    assert len(result.generations) == 3 and engine_result.model_version == tiny_version.name
    assert len(bodies) >= 3  # greedy and sampled requests, from the backend and through the engine
    assert all("suffix" not in body for body in bodies)
    # The sentinels are in the prompt text, in the model's own order, around the real prefix and suffix.
    assert {body["prompt"] for body in bodies} == {fim.format(PREFIX, SUFFIX)}
