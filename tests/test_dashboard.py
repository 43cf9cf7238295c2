"""``/dashboard`` on a real server: real completions and feedback in, the same figures out, drawn by
a real headless Chromium (screenshot pixels and DOM text checked), and its rollback button works."""

import io
import json
import os
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from editloop.feedback import control
from editloop.models.registry import Registry
from editloop.training.cycle import CycleState
from editloop.training.gate import GateReport
from tests.chromium import Browser
from tests.server_fixtures import ADMIN, USER, auth, client, copy_home, running_server

PER_VERSION = 6
CHART_POINTS = "+document.getElementById('chart-latency').dataset.points"
CHART_BOXES = """JSON.stringify(Object.fromEntries(
    [...document.querySelectorAll('.chart svg')].map(s => [s.id, s.getBoundingClientRect()])))"""
# The page's colours for the first and second version (COLORS in dashboard.html).
VERSION_RGB = [(0x3B, 0x6F, 0xD4), (0xE0, 0x7B, 0x39)]


def complete_and_react(http: httpx.Client, version: str, tag: str) -> list[dict]:
    """Completions on ``version``; every 3rd served one accepted, every 3rd rejected and rewritten."""
    replies = []
    for i in range(PER_VERSION):
        body = {"prefix": f"def {tag}_{i}(items):\n    total = ", "suffix": "\n", "n": 2, "max_tokens": 8}
        reply = http.post("/complete", json=body, headers=auth())
        assert reply.status_code == 200 and reply.json()["model_version"] == version
        replies.append(reply.json())
        time.sleep(0.25)  # spread over a few 1-second buckets: the charts get several points
    events = []
    for i, r in enumerate(replies):
        if r["abstained"] or not r["choices"]:
            continue
        cid = r["id"]
        if i % 3 == 0:
            events += [{"type": "shown", "event_id": f"{cid}.s", "completion_id": cid}]
            events += [{"type": "accepted", "event_id": f"{cid}.a", "completion_id": cid, "choice": 0}]
        elif i % 3 == 1:
            events += [{"type": "shown", "event_id": f"{cid}.s", "completion_id": cid}]
            events += [{"type": "rejected", "event_id": f"{cid}.r", "completion_id": cid}]
            events += [{"type": "edited", "event_id": f"{cid}.e", "completion_id": cid, "text": "sum(items)"}]
    reply = http.post("/feedback", json={"events": events}, headers=auth())
    assert reply.status_code == 202 and reply.json()["stored"] == len(events)
    return replies


def expected(replies: list[dict]) -> dict:
    """The figures the dashboard must show for these replies and the reactions above."""
    served = [(i, r) for i, r in enumerate(replies) if not r["abstained"] and r["choices"]]
    accepted = [r for i, r in served if i % 3 == 0]
    rejected = [r for i, r in served if i % 3 == 1]
    chars = sum(len(r["choices"][0]["text"]) for r in accepted)
    written = chars + len("sum(items)") * len(rejected)
    return {
        "completions": len(replies),
        "abstained": sum(r["abstained"] for r in replies),
        "seen": len(accepted) + len(rejected),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "chars_accepted": chars,
        "chars_written": written,
        "chars_saved": chars,
    }


def cycles_in_redis(app) -> list[dict]:
    """What the trainer writes: two finished cycles (gate passed, gate failed) and a running one."""
    client = app.state.services.feedback.log.store.client
    gate = GateReport(
        True,
        [],
        "v1",
        "v2",
        40,
        feedback={
            "edit_similarity": {"current": 0.41, "candidate": 0.47, "delta": 0.06, "low": 0.02, "high": 0.1}
        },
    )
    failed = GateReport(False, ["edit_similarity fell"], "v2", "v3", 40)
    states = [
        CycleState(
            "cycle-published",
            stage="publish",
            status="published",
            progress=1.0,
            parent="v1",
            version="v2",
            message="published v2",
            reports={"gate": gate.to_dict()},
        ),
        CycleState(
            "cycle-rejected",
            stage="gate",
            status="rejected",
            progress=1.0,
            parent="v2",
            message="gate: edit_similarity fell",
            reports={"gate": failed.to_dict(), "trajectory": TRAJECTORY, "warm_start": None},
        ),
    ]
    for state in states:
        control.record_final(client, state.to_dict(), None)
    running = CycleState("cycle-running", stage="sft", progress=0.25, parent="v2", message="sft: step 12/60")
    # Held by this (live) process, as a trainer holds it: without a live holder it shows interrupted.
    client.set(control.LOCK, f"{socket.gethostname()}:{os.getpid()}:dashboard-test", ex=600)
    control.publish_state(client, running.to_dict())
    return [s.to_dict() for s in (*states, running)]


def _point(label: str, delta: float, drop: float) -> dict:
    gain = {"delta": delta, "low": delta - 0.01, "high": delta + 0.01}
    summary = f"held-out {delta:+.4f}, worst general drop {drop:+.4f} (lines)"
    return {
        "label": label,
        "passed": False,
        "chosen": False,
        "heldout_gain": gain,
        "general_drop": {"lines": drop},
        "summary": summary,
    }


TRAJECTORY = [_point("sft 30/60", 0.012, 0.031), _point("sft 60/60", 0.020, 0.047)]


def wait_for_figures(http: httpx.Client, total: int) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = http.get("/dashboard/data", headers=auth()).json()
        if data["feedback"]["totals"]["completions"] == total:
            return data
        time.sleep(0.2)
    raise AssertionError(f"the dashboard never counted {total} completions: {data['feedback']['totals']}")


@pytest.fixture(scope="module")
def served(tiny_settings, tiny_version, tmp_path_factory):
    """A server that served v1, then v2 (the same GGUF imported again), with feedback on both."""
    home = copy_home(tiny_settings, tmp_path_factory.mktemp("dashboard"))
    Registry(home / "models").import_gguf(tiny_version.gguf_path())
    server = running_server(home, dashboard_bucket_s=1, abstain_threshold=0.0)
    with server as (url, _settings, app), client(url) as http:
        on_v1 = complete_and_react(http, "v1", "first")
        activated = http.post("/admin/models/v2/activate", headers=auth(ADMIN))
        assert activated.json()["serving"] == "v2"
        on_v2 = complete_and_react(http, "v2", "second")
        cycles = cycles_in_redis(app)
        yield url, http, {"v1": on_v1, "v2": on_v2}, cycles


def test_data_matches_what_was_served_and_posted(served) -> None:
    _, http, replies, cycles = served
    data = wait_for_figures(http, 2 * PER_VERSION)
    versions = {v["version"]: v for v in data["feedback"]["versions"]}
    assert list(versions) == ["v1", "v2"]
    for name, figures in versions.items():
        want = expected(replies[name])
        assert {k: figures[k] for k in want} == want, name
        assert figures["acceptance_rate"] == (
            round(want["accepted"] / want["seen"], 4) if want["seen"] else None
        )
        assert (
            figures["latency_ms"]["mean"] > 0 and figures["latency_ms"]["p50"] <= figures["latency_ms"]["p95"]
        )
    assert sum(p["completions"] for p in data["feedback"]["series"]) == 2 * PER_VERSION
    assert {p["version"] for p in data["feedback"]["series"]} == {"v1", "v2"}

    models = data["models"]
    assert (models["current"], models["serving"]) == ("v2", "v2")
    assert [v["version"] for v in models["versions"]] == ["v1", "v2"]
    got = data["cycles"]
    assert got["cycle"]["cycle_id"] == "cycle-running" and got["cycle"]["stage"] == "sft"
    assert [c["cycle_id"] for c in got["history"]] == ["cycle-rejected", "cycle-published"]
    assert got["history"][1]["reports"]["gate"] == cycles[0]["reports"]["gate"]
    # The rejected cycle is the refused streak, with each checkpoint it tried.
    assert got["refused"]["streak"] == 1 and got["refused"]["last"]["cycle_id"] == "cycle-rejected"
    assert [t["checkpoint"] for t in got["refused"]["last"]["tried"]] == ["sft 30/60", "sft 60/60"]


def test_data_needs_a_token_and_valid_parameters(served) -> None:
    _, http, _, _ = served
    assert http.get("/dashboard/data").status_code == 401
    assert http.get("/dashboard/data", headers=auth("wrong")).status_code == 401
    bad = http.get("/dashboard/data", params={"project": "no spaces"}, headers=auth())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert http.get("/dashboard/data", params={"hours": -1}, headers=auth()).status_code == 400
    other = http.get("/dashboard/data", params={"project": "elsewhere"}, headers=auth()).json()
    assert other["feedback"]["totals"]["completions"] == 0
    page = http.get("/dashboard")  # the page itself holds no data: it asks for a token
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/data" in page.text and "<script" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN: offline machines


def colour_pixels(image: Image.Image, box: dict, rgb: tuple[int, int, int]) -> int:
    crop = image.convert("RGB").crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
    return sum(
        n for n, c in crop.getcolors(1 << 20) if all(abs(a - b) <= 12 for a, b in zip(c, rgb, strict=True))
    )


def test_the_page_draws_the_figures_in_chromium_and_rolls_back(served, tmp_path: Path) -> None:
    url, http, replies, _ = served
    wait_for_figures(http, 2 * PER_VERSION)
    with Browser(width=1280, height=1700) as page:
        page.goto(f"{url}/dashboard")  # no token yet: the page says why it shows nothing
        page.wait_for("document.body.dataset.state === 'error'")
        assert page.eval("document.getElementById('message').textContent").startswith("unauthorized: ")
        assert page.eval("document.getElementById('rollback').disabled")
        page.goto(f"{url}/dashboard#token={USER}&admin={ADMIN}")
        page.wait_for(f"document.body.dataset.state === 'ready' && {CHART_POINTS} > 0")
        text = page.eval("document.body.innerText")
        boxes = json.loads(page.eval(CHART_BOXES))
        png = page.screenshot()
        (tmp_path / "dashboard.png").write_bytes(png)
        if target := os.environ.get("EDITLOOP_DASHBOARD_SCREENSHOT"):
            Path(target).write_bytes(png)

        for needle in ("v1", "v2", "cycle-running", "cycle-published", "cycle-rejected", "sft: step 12/60"):
            assert needle in text, needle
        assert "edit_similarity fell" in text
        assert "none of 2 passed" in text and "refused 1 cycle(s) in a row" in text
        page.eval(
            "document.querySelector('tr[data-cycle=cycle-rejected] details.trajectory').open = true; true"
        )
        points = page.eval(
            "document.querySelector('tr[data-cycle=cycle-rejected] details.trajectory').innerText"
        )
        assert "sft 30/60" in points and "sft 60/60" in points and "0.047" in points
        assert "token=" not in page.eval("location.href")  # the page moved the tokens to sessionStorage
        for name in ("v1", "v2"):
            row = page.eval(f"document.querySelector('#versions tr[data-version={name}]').innerText")
            assert row.split("\t")[1].strip() == str(len(replies[name]))  # the completions column

        image = Image.open(io.BytesIO(png))
        assert image.size == (1280, 1700)
        for chart in ("chart-latency", "chart-abstain"):  # every completion has a latency and a rate
            box = boxes[chart]
            assert box["width"] > 300 and box["height"] > 150
            drawn = [colour_pixels(image, box, rgb) for rgb in VERSION_RGB]
            assert all(n > 40 for n in drawn), (chart, drawn)  # both versions' lines and dots are there

        page.eval("window.confirm = () => true; document.getElementById('rollback').click(); true")
        note = page.wait_for(
            "(t => t.startsWith('roll') && t)(document.getElementById('rollback-note').textContent)"
        )
        assert note == "rolled back: v1 is active, serving v1"
        page.wait_for("document.getElementById('active').textContent === 'v1'")
    models = http.get("/admin/models", headers=auth(ADMIN)).json()
    assert (models["current"], models["serving"]) == ("v1", "v1")


def test_with_redis_down_the_page_keeps_the_last_figures_and_says_why(
    tiny_settings, tiny_version, redis_proc, tmp_path: Path
) -> None:
    home = copy_home(tiny_settings, tmp_path)
    server = running_server(home, redis_url=redis_proc.url)
    with server as (url, _settings, _app), client(url) as http:
        reply = http.post("/complete", json={"prefix": "def f(x):\n    return "}, headers=auth())
        assert reply.status_code == 200
        wait_for_figures(http, 1)
        redis_proc.kill()
        data = http.get("/dashboard/data", headers=auth()).json()
        assert data["feedback"]["status"] == "unavailable" and "Redis" in data["feedback"]["error"]
        assert data["feedback"]["totals"]["completions"] == 1  # what was read before
        assert data["cycles"]["status"] == "unavailable"
        assert data["models"]["current"] == "v1"
