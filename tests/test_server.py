"""The HTTP server end to end: a real uvicorn on loopback, the real tiny model, real clients."""

import asyncio
import threading
from pathlib import Path

import httpx
import openai
import pytest

from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.models.publish import publish_checkpoint
from editloop.server.main import effective_host
from editloop.server.services import Dispatch
from editloop.settings import load_settings
from tests.server_fixtures import ADMIN, USER, auth, client, copy_home, running_server

PYTHON_PREFIX = "import os\n\n\ndef read_config(path):\n    with open(path) as f:\n        "
PYTHON_SUFFIX = "\n    return data\n"


@pytest.fixture(scope="module")
def server(tiny_settings, tiny_version, tmp_path_factory):
    home = copy_home(tiny_settings, tmp_path_factory.mktemp("server-home"))
    with running_server(home, abstain_threshold=0.0) as (url, settings, _):
        yield url, settings


def test_health_names_the_serving_model(server) -> None:
    url, _ = server
    body = httpx.get(f"{url}/health").json()
    assert body["status"] == "ok" and body["model"]["version"] == "v1"


def test_complete_returns_ranked_scored_choices(server) -> None:
    url, _ = server
    with client(url) as http:
        reply = http.post(
            "/complete",
            headers=auth(),
            json={
                "prefix": PYTHON_PREFIX,
                "suffix": PYTHON_SUFFIX,
                "language": "python",
                "n": 5,
                "temperature": 1.0,
            },
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model_version"] == "v1" and body["id"].startswith("cmpl-")
    assert len(body["candidates"]) == 5
    scores = [c["score"] for c in body["choices"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert {"prompt_ms", "decode_ms", "total_ms"} <= set(body["timings"])
    kept = [c for c in body["candidates"] if c["dropped"] is None]
    assert len(body["choices"]) == len(kept)


def test_repeated_request_is_served_from_cache(server) -> None:
    url, _ = server
    request = {"prefix": "def square(x):\n    return ", "suffix": "\n", "language": "python", "seed": 3}
    with client(url) as http:
        first = http.post("/complete", headers=auth(), json=request).json()
        second = http.post("/complete", headers=auth(), json=request).json()
    if first["choices"]:
        assert second["cached"] is True and second["choices"][0]["text"] == first["choices"][0]["text"]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
    ],
)
def test_completion_needs_a_token(server, headers, status, code) -> None:
    url, _ = server
    reply = httpx.post(f"{url}/complete", headers=headers, json={"prefix": "x = "})
    assert reply.status_code == status and reply.json()["error"]["code"] == code


def test_admin_routes_refuse_user_tokens(server) -> None:
    url, _ = server
    assert httpx.get(f"{url}/admin/models", headers=auth(USER)).status_code == 403
    assert httpx.get(f"{url}/admin/models").status_code == 401
    listing = httpx.get(f"{url}/admin/models", headers=auth(ADMIN)).json()
    assert listing["current"] == "v1" and listing["versions"][0]["version"] == "v1"


def test_invalid_field_is_a_400_naming_it(server) -> None:
    url, _ = server
    reply = httpx.post(f"{url}/complete", headers=auth(), json={"prefix": "x", "n": 99})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "invalid_request" and error["fields"][0]["field"] == "n"


def test_oversized_body_is_a_413(server) -> None:
    url, settings = server
    reply = httpx.post(
        f"{url}/complete", headers=auth(), json={"prefix": "x" * (settings.max_body_bytes + 10)}
    )
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"


def test_infill_answers_a_llama_vscode_request(server) -> None:
    url, _ = server
    body = {
        "input_prefix": "import os\n\ndef main():\n",
        "input_suffix": "\n    print(path)\n",
        "input_extra": [{"filename": "util.py", "text": "def helper():\n    return 1\n"}],
        "prompt": "    path = ",
        "n_predict": 32,
        "n_indent": 4,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "cache_prompt": True,
        "samplers": ["top_k", "top_p", "infill"],
        "top_k": 40,
        "top_p": 0.99,
        "stream": False,
    }
    reply = httpx.post(f"{url}/infill", headers=auth(), json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert isinstance(out["content"], str) and isinstance(out["tokens_cached"], int)
    assert out["truncated"] is False and out["timings"]["prompt_n"] >= 0
    fields = httpx.post(
        f"{url}/infill",
        headers=auth(),
        json=body | {"response_fields": ["content", "timings/prompt_n", "truncated"]},
    ).json()
    assert set(fields) == {"content", "timings/prompt_n", "truncated"}


def test_openai_client_gets_completions(server) -> None:
    url, _ = server
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=USER, max_retries=0)
    out = api.completions.create(
        model="editloop",
        prompt=PYTHON_PREFIX,
        suffix=PYTHON_SUFFIX,
        max_tokens=16,
        n=2,
        temperature=0.8,
        stop=["\n\n"],
        logprobs=1,
    )
    assert out.model == "v1" and 1 <= len(out.choices) <= 2
    assert all("\n\n" not in c.text for c in out.choices)
    assert out.usage is not None and out.usage.prompt_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).completions.create(
            model="editloop", prompt="x", max_tokens=4
        )


def test_openai_stream_ends_with_done(server) -> None:
    url, _ = server
    with httpx.stream(
        "POST",
        f"{url}/v1/completions",
        headers=auth(),
        json={"prompt": "x = ", "max_tokens": 8, "stream": True},
    ) as reply:
        lines = [line for line in reply.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and lines[0].startswith("data: {")


def test_tabby_dialect(server) -> None:
    url, _ = server
    health = httpx.get(f"{url}/tabby/v1/health", headers=auth()).json()
    assert health["model"] == "v1" and "version" in health
    reply = httpx.post(
        f"{url}/tabby/v1/completions",
        headers=auth(),
        json={
            "language": "python",
            "segments": {
                "prefix": PYTHON_PREFIX,
                "suffix": PYTHON_SUFFIX,
                "filepath": "cfg.py",
                "declarations": [{"filepath": "a.py", "body": "X = 1\n"}],
            },
        },
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"].startswith("cmpl-") and isinstance(reply.json()["choices"], list)


def test_metrics_expose_latency_and_model(server) -> None:
    url, _ = server
    httpx.post(f"{url}/complete", headers=auth(), json={"prefix": "y = ", "language": "python"})
    text = httpx.get(f"{url}/metrics").text
    assert 'editloop_request_seconds_bucket{endpoint="complete"' in text
    assert 'editloop_model_active{version="v1"} 1.0' in text
    assert "editloop_candidates_total" in text


def test_full_queue_answers_503_at_once(tiny_settings, tmp_path) -> None:
    home = copy_home(tiny_settings, tmp_path)
    with running_server(home, max_pending=1) as (url, _, app):
        assert httpx.get(f"{url}/health/detail", headers=auth()).json()["pending"] == 0
        # Fill the queue from inside: a real decode on the tiny model is too fast to collide reliably.
        limiter = app.state.services.limiter
        limiter.acquire()
        try:
            reply = httpx.post(f"{url}/complete", headers=auth(), json={"prefix": "x = "})
        finally:
            limiter.release()
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "overloaded"
        assert reply.headers["retry-after"] == "1"


def _ran_on_the_loop(services) -> list[bool]:
    """Wraps the real engine's ``complete`` to note, per run, whether it ran on the event loop."""
    seen: list[bool] = []
    complete = services.engine.complete

    def noting(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:  # a worker thread runs no loop
            seen.append(False)
        return complete(*args, **kwargs)

    services.engine.complete = noting
    return seen


@pytest.mark.parametrize("inline_ms", [1000.0, 0.0])
def test_a_fast_completion_runs_on_the_loop_once_the_model_proves_fast(
    tiny_settings, tiny_version, tmp_path, inline_ms
) -> None:
    home = copy_home(tiny_settings, tmp_path)
    with running_server(home, cache_entries=0, inline_completion_ms=inline_ms) as (url, _, app):
        seen = _ran_on_the_loop(app.state.services)
        with client(url) as http:
            for seed in range(4):
                body = {"prefix": "def add(a, b):\n    return ", "seed": seed, "max_tokens": 4}
                assert http.post("/complete", headers=auth(), json=body).status_code == 200
        # The first run measures the model on a worker; then the tiny model is fast enough.
        assert seen == ([False, True, True, True] if inline_ms else [False] * 4)


def _result(ms: float, version: str = "v1") -> CompletionResult:
    return CompletionResult(
        id="c", model_version=version, choices=[], abstained=True, mode="line", timings={"total_ms": ms}
    )


def test_dispatch_runs_on_the_loop_only_what_cannot_be_worth_a_thread() -> None:
    dispatch = Dispatch(inline_ms=20.0, max_candidates=8, default_tokens=128)
    line = CompletionRequest(prefix="x = ", max_tokens=32)
    assert not dispatch.inline(line, pending=1)  # nothing measured yet
    dispatch.observe(line, _result(5.0))
    assert dispatch.inline(line, pending=1)
    assert not dispatch.inline(line, pending=2)  # another one waits: it may supersede this one
    assert not dispatch.inline(line.model_copy(update={"project_root": "/src"}), pending=1)
    # Five times the budget of the measured ones is expected to take 25 ms: a worker's.
    assert not dispatch.inline(line.model_copy(update={"n": 5}), pending=1)
    assert not dispatch.inline(CompletionRequest(prefix="x = "), pending=1)  # budgeted at 128 tokens
    for _ in range(3):
        dispatch.observe(line, _result(80.0))
    assert not dispatch.inline(line, pending=1)  # the model has become slow
    dispatch.observe(line, _result(1.0, version="v2"))
    dispatch.observe(line, _result(1.0, version="v2"))
    assert dispatch.inline(line, pending=1)  # a new model is measured afresh
    dispatch.observe(line, _result(300.0, version="v3"))
    assert not dispatch.inline(line, pending=1)


def test_no_tokens_means_loopback_only() -> None:
    assert effective_host(load_settings(host="0.0.0.0")) == "127.0.0.1"
    assert effective_host(load_settings(host="0.0.0.0", api_tokens=["t"])) == "0.0.0.0"


def test_hot_swap_under_load_loses_no_request(tiny_settings, tiny_hf_dir: Path, tmp_path) -> None:
    home = copy_home(tiny_settings, tmp_path / "home")
    publish_checkpoint(load_settings(home=home), tiny_hf_dir, parent="v1")  # v2, same weights re-exported
    failures: list[str] = []
    served: set[str] = set()
    stop = threading.Event()

    def hammer(url: str) -> None:
        with client(url) as http:
            while not stop.is_set():
                reply = http.post(
                    "/complete",
                    headers=auth(),
                    json={
                        "prefix": "def f(x):\n    return ",
                        "n": 2,
                        "temperature": 0.9,
                        "seed": len(served),
                    },
                )
                if reply.status_code != 200:
                    failures.append(f"{reply.status_code} {reply.text[:200]}")
                else:
                    served.add(reply.json()["model_version"])

    with running_server(home) as (url, _, _app):
        workers = [threading.Thread(target=hammer, args=(url,)) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            admin = {"headers": auth(ADMIN), "timeout": 60}
            assert httpx.post(f"{url}/admin/models/v2/activate", **admin).json()["serving"] == "v2"
            assert httpx.post(f"{url}/admin/rollback", **admin).json()["serving"] == "v1"
            assert httpx.post(f"{url}/admin/models/v2/activate", **admin).json()["serving"] == "v2"
        finally:
            stop.set()
            for w in workers:
                w.join()
    assert failures == []
    assert served == {"v1", "v2"}
