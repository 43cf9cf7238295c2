"""Schemathesis fuzzes every operation of the server's OpenAPI schema against a live server.

No generated request, valid or not, may get a 5xx, and every 4xx must be our JSON error with a
machine-readable ``error.code``. The server has its own copy of the model home, so the fuzzer's
``/admin`` activations and rollbacks touch no other test's registry.

The schema comes from the app object (building it starts nothing) rather than the live
``/openapi.json``: ``schemathesis.pytest.from_fixture`` 4.32.5 fails on pytest 9.2 (it sets
``request.node._nodeid``, which pytest 9.2 no longer has), and the two documents are the same.
"""

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from editloop.server.app import create_app
from editloop.settings import load_settings
from tests.server_fixtures import ADMIN, USER, auth, copy_home, running_server

schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi())


@pytest.fixture(scope="module")
def live_url(tiny_settings, tiny_version, tmp_path_factory):
    home = copy_home(tiny_settings, tmp_path_factory.mktemp("fuzz-home"))
    # Two seconds of decoding per request at most: the fuzzer probes the edges, not the model.
    with running_server(home, abstain_threshold=0.0, request_timeout_s=2.0) as (url, _, _):
        yield url


def errors_are_json_with_a_code(ctx, response, case) -> None:
    if not 400 <= response.status_code < 500:
        return
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from exc
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        raise AssertionError(f"{response.status_code} body has no error.code: {body!r}")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, live_url) -> None:
    token = ADMIN if case.path.startswith("/admin") else USER
    case.call_and_validate(
        base_url=live_url,
        headers=auth(token),
        timeout=30,
        checks=[not_a_server_error, errors_are_json_with_a_code],
    )


def test_the_live_server_serves_this_schema(live_url) -> None:
    assert httpx.get(f"{live_url}/openapi.json", timeout=10).json() == schema.raw_schema


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/complete", '{"prefix": "x = \\udc80"}'),
        ("/infill", '{"input_prefix": "x = \\udc80"}'),
        ("/v1/completions", '{"prompt": "x = \\udc80"}'),
        ("/tabby/v1/completions", '{"segments": {"prefix": "x = \\udc80"}}'),
    ],
)
def test_a_lone_surrogate_is_not_a_server_error(live_url, path, body) -> None:
    # Valid JSON that no UTF-8 encoder takes; Hypothesis never generates it (it leaves out
    # surrogates), and a JavaScript client that cuts a string between a surrogate pair sends it.
    headers = {**auth(), "Content-Type": "application/json"}
    reply = httpx.post(f"{live_url}{path}", content=body, headers=headers, timeout=30)
    assert reply.status_code < 500, reply.text
