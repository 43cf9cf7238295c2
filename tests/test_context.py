"""Context from the codebase: gathering, path safety, budget fitting, codebase candidates, events."""

import os
from dataclasses import asdict
from pathlib import Path

import pytest

from editloop.completion.context.files import source_files
from editloop.completion.context.index import RepoIndex
from editloop.completion.context.recent import RecentChunks
from editloop.completion.context.workspace import ContextLimits, ContextService, Workspace
from editloop.completion.engine import CompletionEngine, EngineConfig
from editloop.completion.prompt import build_prompt
from editloop.completion.ranker import LogprobRanker, RankContext, RankInput
from editloop.completion.served import load_served
from editloop.completion.types import CompletionRequest, Snippet
from editloop.completion.value import FEATURES, ValueInput, ValueModel, features
from editloop.corpus import SourceFile
from editloop.errors import ContextRootError
from editloop.eval.engine import engine_for
from editloop.eval.fim import evaluate_fim, fim_tasks
from editloop.eval.replay import ReplayConfig
from editloop.eval.replay_cli import load_tasks, run_replay
from editloop.feedback.completions import completion_event
from editloop.feedback.events import content_hash, parse_event
from editloop.feedback.privacy import Privacy
from editloop.models.llama import LlamaBackend
from editloop.models.manager import ModelManager
from editloop.settings import load_settings
from editloop.training.coldstart import extract_samples, with_repo_context
from editloop.training.dataset import DatasetConfig, build_dataset
from editloop.training.prompts import FimExample, HfPromptTokenizer, fim_prompt_ids
from editloop.training.value import ValueRow, train_value_model
from tests.server_fixtures import auth, client, copy_home, running_server

MONEY = '''"""Money in cents."""


class Money:
    """An amount of one currency, in cents."""

    def __init__(self, cents: int, currency: str = "EUR") -> None:
        self.cents = cents
        self.currency = currency


def format_price(money: Money) -> str:
    return f"{money.cents / 100:.2f} {money.currency}"
'''

CART = """from shop.money import Money, format_price


def total(items):
    cents = sum(item.price.cents for item in items)
    return Money(cents)


def receipt(items):
    lines = [format_price(item.price) for item in items]
    lines.append(format_price(total(items)))
    return "\\n".join(lines)
"""


def make_project(base: Path) -> Path:
    root = base / "repos" / "shop"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "money.py").write_text(MONEY)
    (root / "shop" / "cart.py").write_text(CART)
    (root / ".gitignore").write_text("build/\n*.gen.py\n!keep.gen.py\n")
    (root / "build").mkdir()
    (root / "build" / "money.py").write_text("SECRET_BUILD = 1\n")
    (root / "shop" / "tables.gen.py").write_text("GENERATED_TABLE = 1\n")
    (root / "shop" / "keep.gen.py").write_text("KEPT_GENERATED = 1\n")
    (root / "shop" / "huge.py").write_text("HUGE_CONSTANT = 1\n" * 10_000)
    outside = base / "outside"
    outside.mkdir()
    (outside / "leak.py").write_text("def leaked_secret():\n    return 'OUTSIDE_ONLY'\n")
    os.symlink(outside / "leak.py", root / "shop" / "link.py")
    os.symlink(outside, root / "linked_dir")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def limits(**overrides) -> ContextLimits:
    return ContextLimits(**{"max_file_bytes": 20_000, **overrides})


def test_files_honour_gitignore_the_size_cap_and_stay_inside(project: Path) -> None:
    found = {p.relative_to(project).as_posix() for p in source_files(project, 100, 20_000)}
    assert found == {"shop/money.py", "shop/cart.py", "shop/keep.gen.py"}
    assert len(list(source_files(project, 1, 20_000))) == 1


def test_definitions_similar_chunks_and_recent_edits_are_gathered(project: Path) -> None:
    workspace = Workspace(project, limits())
    workspace.refresh(force=True)
    prefix = "from shop.money import Money\n\n\ndef refund(money: Money):\n    return format_price("
    snippets = workspace.gather("shop/refund.py", prefix, ")\n")
    by_path = {s.filepath: s for s in snippets}
    assert "class Money:" in by_path["shop/money.py"].text  # a definition of a name at the cursor
    assert [s.score for s in snippets] == sorted((s.score for s in snippets), reverse=True)
    assert all(s.score is not None and 0 < s.score <= 1 for s in snippets)
    # Similar code: cart.py uses the same names.
    assert "shop/cart.py" in by_path
    # Nothing from ignored, oversized or outside files, in any snippet.
    text = "\n".join(s.text for s in snippets)
    assert "SECRET_BUILD" not in text and "HUGE_CONSTANT" not in text and "OUTSIDE_ONLY" not in text
    # A recent edit of another file joins; the cursor's own file never does.
    workspace.visited("shop/notes.py", "PLAN = 'recently edited plan'\n", line=0, edited=True)
    workspace.visited("shop/refund.py", "def refund(): ...\n", line=0, edited=True)
    paths = [s.filepath for s in workspace.gather("shop/refund.py", prefix, ")\n")]
    assert "shop/notes.py" in paths and "shop/refund.py" not in paths


def test_edits_outside_the_root_are_ignored(project: Path, tmp_path: Path) -> None:
    workspace = Workspace(project, limits())
    workspace.refresh(force=True)
    for path in ("../outside/leak.py", str(tmp_path / "outside" / "leak.py"), "shop/link.py"):
        workspace.visited(path, "def leaked_secret(): return 'OUTSIDE_ONLY'\n", line=0, edited=True)
    assert workspace.index.relative("linked_dir/leak.py") is None
    snippets = workspace.gather("shop/a.py", "leaked_secret(", ")\n")
    assert all("OUTSIDE_ONLY" not in s.text for s in snippets)
    assert workspace.recent.chunks() == []


def test_the_index_follows_changes_incrementally(project: Path) -> None:
    index = RepoIndex(project, max_files=100, max_file_bytes=20_000)
    assert index.refresh() == 3
    assert index.refresh() == 0  # nothing changed: nothing re-read
    (project / "shop" / "tax.py").write_text("def vat_rate(country):\n    return 0.2\n")
    (project / "shop" / "cart.py").unlink()
    assert index.refresh() == 2
    assert [rel for rel, _, _ in index.definitions(["vat_rate", "total"], None)] == ["shop/tax.py"]
    assert all(c.rel != "shop/cart.py" for c, _ in index.similar("format_price items", None, 10))


def test_the_ring_evicts_near_duplicates() -> None:
    ring = RecentChunks(capacity=3, lines=20)
    body = "\n".join(f"line {i}" for i in range(40))
    ring.add("a.py", body, line=10)
    ring.add("a.py", body, line=11)  # scrolled by one line: replaces the first
    ring.add("b.py", "other = 1\n", line=0)
    assert [c.rel for c in ring.chunks()] == ["a.py", "b.py"]
    for name in "cdef":
        ring.add(f"{name}.py", f"{name} = 1\n", line=0)
    assert [c.rel for c in ring.chunks()] == ["d.py", "e.py", "f.py"]


def test_codebase_continuations_copy_whole_lines_and_blocks(project: Path) -> None:
    workspace = Workspace(project, limits())
    workspace.refresh(force=True)
    # The line so far matches a line of cart.py: the rest of it is proposed.
    (line,) = workspace.continuations("shop/new.py", "def f(items):\n    lines = [format_pr", block=False)[:1]
    assert line.text == "ice(item.price) for item in items]" and line.rel == "shop/cart.py"
    # At a line start, the line that follows a copy of the previous line elsewhere.
    after = workspace.continuations(
        "shop/new.py", "x = 1\n    lines.append(format_price(total(items)))\n    ", False
    )
    assert after[0].text == 'return "\\n".join(lines)'
    # A block: the header line and its body, re-indented to the cursor's indentation.
    (block, *_) = workspace.continuations("shop/new.py", "class Wallet:\n  def __init__(self, cents", True)
    assert block.text.startswith(": int, currency: str") and "\n      self.cents = cents\n" in block.text
    # The cursor's own file above the cursor counts too, and files never indexed give nothing.
    own = workspace.continuations("shop/new.py", "alpha = compute(1)\nbeta = 2\nalpha = comp", False)
    assert own[0].text == "ute(1)" and own[0].rel == ""
    # The previous line, repeated, is a weaker vote than a copy seen after the same line elsewhere.
    (repeat,) = workspace.continuations("shop/new.py", "def f():\n    emit_row(1, 'a')\n    ", False)
    assert repeat.text == "emit_row(1, 'a')" and repeat.share < 0.5


@pytest.mark.parametrize(
    "name",
    [
        "../outside",
        "linked_dir",
        "relative/shop",
        "/",
        "{base}/repos/../outside",
        "{base}/repos/shop/../../outside",
        "{base}/repos/shop\x00",
    ],
)
def test_project_roots_outside_the_allowed_roots_are_refused(
    project: Path, tmp_path: Path, name: str
) -> None:
    service = ContextService([tmp_path / "repos"], limits())
    candidate = name.format(base=tmp_path)
    if name == "linked_dir":
        candidate = str(project / "linked_dir")  # inside by name, outside once resolved
    with pytest.raises(ContextRootError) as caught:
        service.workspace(candidate)
    assert caught.value.code == "context_root_not_allowed"
    with pytest.raises(ContextRootError):
        ContextService([], limits()).workspace(str(project))


def test_workspaces_are_cached_and_bounded(project: Path, tmp_path: Path) -> None:
    second = tmp_path / "repos" / "second"
    second.mkdir()
    service = ContextService([tmp_path / "repos"], limits(max_workspaces=1))
    first = service.workspace(str(project))
    assert service.workspace(str(project)) is first
    service.workspace(str(second))
    assert service.workspace(str(project)) is not first  # evicted, rebuilt


def test_a_large_index_is_built_in_the_background(project: Path, tmp_path: Path) -> None:
    service = ContextService([tmp_path / "repos"], limits(build_wait_s=0.0))
    workspace = service.workspace(str(project))  # returns at once, the build goes on
    assert workspace.ready.wait(10)
    assert workspace.index.stats["files"] == 3
    (project / "shop" / "tax.py").write_text("def vat_rate(country):\n    return 0.2\n")
    workspace.refresh()  # not due yet (refresh_s): nothing re-read
    assert workspace.index.stats["files"] == 3
    workspace.refresh(force=True)
    assert workspace.index.stats["files"] == 4


@pytest.fixture(scope="module")
def backend(tiny_version):
    backend = LlamaBackend(
        tiny_version.gguf_path(), tiny_version.manifest.fim, tiny_version.name, max_candidates=1
    )
    yield backend
    backend.close()


def test_the_prompt_fits_snippets_by_score(backend) -> None:
    budget_chars = backend.n_ctx  # a quarter of the budget in tokens is far less than this many characters
    snippets = [
        Snippet(filepath="low.py", text="LOW = 1\n", score=0.1),
        Snippet(filepath="huge.py", text="x = 1\n" * budget_chars, score=0.9),
        Snippet(filepath="high.py", text="HIGH = 1\n", score=0.8),
        Snippet(filepath="client.py", text="CLIENT = 1\n"),  # a client's own snippet: first
    ]
    prompt = build_prompt(backend, "y = ", "\n", snippets, "main.py", 16)
    # The client's snippet, then by score; the huge one does not fit after those and is skipped.
    assert prompt.snippets == [3, 2, 0]
    assert prompt.extra_tokens <= int((backend.n_ctx - 16 - 8) * 0.25)
    alone = build_prompt(backend, "y = ", "\n", snippets[1:2], "main.py", 16)
    assert alone.snippets == [0]  # the best one is cut to fit rather than left out


@pytest.fixture(scope="module")
def manager(tiny_registry):
    models = ModelManager(
        tiny_registry, lambda v: load_served(v, LlamaBackend.from_version(v, max_candidates=4))
    )
    assert models.reload()
    yield models
    models.close()


def test_the_engine_gathers_context_and_offers_codebase_candidates(
    manager, project: Path, tmp_path: Path
) -> None:
    service = ContextService([tmp_path / "repos"], limits())
    engine = CompletionEngine(manager, EngineConfig(abstain_threshold=0.0), None, service)
    request = CompletionRequest(
        prefix="from shop.money import Money, format_price\n\n\ndef receipt(items):\n    lines = [format_pr",
        suffix="\n",
        filepath="shop/receipt.py",
        project_root=str(project),
        n=4,
        mode="line",
    )
    result = engine.complete(request)
    assert result.context and {s.filepath for s in result.context} <= {"shop/money.py", "shop/cart.py"}
    copies = [c for c in result.candidates if c.source == "codebase"]
    assert copies[0].text == "ice(item.price) for item in items]" and copies[0].origin == "shop/cart.py"
    assert any(c.source == "codebase" for c in result.choices)  # ranked with the model's
    assert result.timings["context_ms"] >= 0
    event = completion_event(request, result, source="complete")
    assert [s.text_hash for s in event.context] == [content_hash(s.text) for s in result.context]
    assert any(c.source == "codebase" for c in event.candidates)
    private = Privacy(code_free=True, private_paths=True, hash_key=b"k" * 32).apply([event])[0]
    assert all(s.text == "" and s.filepath is None and s.filepath_hash for s in private.context)
    keyed = zip(private.context, result.context, strict=True)
    assert all(s.text_hash != content_hash(t.text) for s, t in keyed)
    # Without a project root, nothing is gathered; a root outside is refused before any decode.
    plain = engine.complete(request.model_copy(update={"project_root": None}))
    assert plain.context == [] and all(c.source == "model" for c in plain.candidates)
    with pytest.raises(ContextRootError):
        engine.complete(request.model_copy(update={"project_root": str(tmp_path / "outside")}))
    with pytest.raises(ContextRootError):
        CompletionEngine(manager, EngineConfig()).complete(request)


def test_http_dialects_gather_context_only_inside_the_allowed_roots(
    tiny_settings, tiny_version, tmp_path: Path
) -> None:
    project = make_project(tmp_path)
    home = copy_home(tiny_settings, tmp_path / "home")
    body = {
        "prefix": "def receipt(items):\n    lines = [format_pr",
        "suffix": "\n",
        "filepath": "shop/receipt.py",
        "n": 3,
        "mode": "line",
    }
    allowed = {"abstain_threshold": 0.0, "context_roots": [tmp_path / "repos"]}
    with running_server(home, **allowed) as (url, _, _app), client(url) as http:
        reply = http.post("/complete", json={**body, "project_root": str(project)}, headers=auth())
        assert reply.status_code == 200, reply.text
        result = reply.json()
        assert {s["filepath"] for s in result["context"]} <= {"shop/money.py", "shop/cart.py"}
        assert result["context"] and {c["source"] for c in result["choices"]} <= {"model", "codebase"}
        assert any(c["source"] == "codebase" for c in result["candidates"])
        for root in (
            str(tmp_path / "outside"),
            str(project / "linked_dir"),
            "shop",
            f"{project}/../../..",
        ):
            refused = http.post("/complete", json={**body, "project_root": root}, headers=auth())
            assert refused.status_code == 403, root
            assert refused.json()["error"]["code"] == "context_root_not_allowed"
        infill = {
            "input_prefix": body["prefix"],
            "input_suffix": "\n",
            "project_root": str(tmp_path / "outside"),
        }
        assert http.post("/infill", json=infill, headers=auth()).status_code == 403
        openai = {"prompt": body["prefix"], "suffix": "\n", "project_root": str(project)}
        assert http.post("/v1/completions", json=openai, headers=auth()).status_code == 200
    with running_server(home, abstain_threshold=0.0) as (url, _, _app), client(url) as http:
        refused = http.post("/complete", json={**body, "project_root": str(project)}, headers=auth())
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "context_root_not_allowed"


def _accepted_story(cid: str, context: list[dict]) -> list:
    base = {"completion_id": cid, "timestamp": "2026-11-01T00:00:00+00:00"}
    events = [
        {
            **base,
            "type": "completion",
            "event_id": f"{cid}-c",
            "prefix": "def refund(money):\n    return ",
            "suffix": "\n",
            "language": "python",
            "filepath": f"shop/{cid}.py",
            "candidates": [{"index": 0, "text": "format_price(money)", "score": 0.4, "shown": True}],
            "context": context,
        },
        {**base, "type": "accepted", "event_id": f"{cid}-a"},
    ]
    return [parse_event(e) for e in events]


def test_training_rows_carry_the_context_the_prompt_had(tiny_hf_dir) -> None:
    snippet = {"filepath": "shop/money.py", "text": MONEY, "text_hash": content_hash(MONEY), "score": 1.0}
    hashed = {"filepath_hash": "ab" * 8, "text": "", "text_hash": "cd" * 16, "score": 0.9}  # code-free
    events = _accepted_story("withctx", [snippet]) + _accepted_story("codefree", [hashed])
    rows = {
        s.completion_id: s
        for s in build_dataset(events, DatasetConfig(heldout_recent=0, heldout_files=0)).sft_train
    }
    assert rows["withctx"].extra == ({"filepath": "shop/money.py", "text": MONEY, "score": 1.0},)
    assert rows["codefree"].extra == ()  # no text was kept: nothing to show the model
    example = FimExample.coerce(asdict(rows["withctx"]))
    tokens = HfPromptTokenizer.load(tiny_hf_dir)
    with_context = fim_prompt_ids(tokens, example, 16)
    without = fim_prompt_ids(tokens, FimExample.coerce(asdict(rows["codefree"])), 16)
    sep = tokens.special_id(tokens.fim.file_sep)
    assert sep in with_context and sep not in without
    start = with_context.index(sep) + 1
    path_ids = tokens.tokenize("shop/money.py\n")
    assert with_context[start : start + len(path_ids)] == path_ids  # the repo layout, as served


def test_cold_start_samples_get_their_repository_context(project: Path) -> None:
    files = [
        SourceFile(f"repo/{p.relative_to(project).as_posix()}", "python", p.read_text())
        for p in source_files(project, 100, 20_000)
    ]
    samples = extract_samples(files, max_samples=50, per_file=4, seed=0)
    every = with_repo_context(samples, files, share=1.0, seed=0)
    assert any(s.extra for s in every)
    assert all(x.filepath != s.filepath for s in every for x in s.extra)  # never its own file
    assert with_repo_context(samples, files, share=0.0, seed=0) == samples


def test_replay_and_fim_eval_measure_with_and_without_context(tiny_settings, tiny_version, tmp_path) -> None:
    project = make_project(tmp_path)
    (project / "shop" / "invoice.py").write_text(CART.replace("receipt", "invoice"))  # much to copy
    settings = load_settings(home=copy_home(tiny_settings, tmp_path / "home"), abstain_threshold=0.0)
    tasks = load_tasks(project, "*.py", None, "all", 0.7)
    config = ReplayConfig(seed=0, max_requests_per_file=12)
    reports = {
        context: run_replay(
            settings, tasks, config, root=str(project), context=context, project=f"ctx-{context}"
        )
        for context in ("none", "repo")
    }
    assert reports["none"]["context"] == "none" and reports["repo"]["context"] == "repo"
    assert "codebase" not in reports["none"]["shown_by_source"]
    assert reports["repo"]["shown_by_source"].get("codebase", 0) > 0
    for report in reports.values():
        assert sum(report["shown_by_source"].values()) == report["shown"]
        assert sum(report["full_accepts_by_source"].values()) == report["full_accepts"]
    # The FIM eval: the same tasks, context from the other files only.
    files = [SourceFile(f"shop/{p.name}", "python", p.read_text()) for p in (project / "shop").glob("*.py")]
    files = [f for f in files if "HUGE" not in f.text]
    fim = fim_tasks(files, 4, seed=0)
    backend = LlamaBackend.from_version(tiny_version, max_candidates=1)
    try:
        engine = engine_for(backend)
        plain = evaluate_fim(engine, fim, seed=0).to_dict()
        with_context = evaluate_fim(
            engine, fim, seed=0, workspace=Workspace.in_memory([(f.path, f.text) for f in files])
        )
    finally:
        backend.close()
    assert plain["top_from_codebase"] == 0
    assert 0 <= with_context.to_dict()["top_from_codebase"] <= len(fim)
    assert len(with_context.sources) == len(fim)


def test_the_value_model_learns_which_source_to_trust(tmp_path: Path) -> None:
    def row(source: str, accepted: bool, i: int) -> ValueRow:
        text = f"value_{i} = compute({i})"
        logprobs = [] if source == "codebase" else [-1.0] * 6
        value = ValueInput("x = 1\n", "\n", text, logprobs or None, True, 0.3, source=source)
        return ValueRow(value, accepted=accepted, file=f"f{i}.py")

    # In this codebase, copies are taken and the model's guesses are not: the source decides.
    rows = [row("codebase", True, i) for i in range(40)] + [row("model", False, i) for i in range(40)]
    model = train_value_model(rows)
    copy, decoded = model.predict_many([rows[0].input, rows[40].input])
    assert copy > 0.5 > decoded
    assert features(rows[0].input)[FEATURES.index("from_codebase")] == 1.0
    # A value model saved before the feature existed still loads and ranks (on the features it knows).
    old = ValueModel(model.weights[:-1], model.bias, model.mean[:-1], model.scale[:-1], FEATURES[:-1])
    old.save(tmp_path)
    loaded = ValueModel.load(tmp_path)
    assert loaded is not None and len(loaded.predict_many([rows[0].input])) == 1
    # The log-prob ranker scores a copy by its codebase share, halved when it breaks the parse.
    context = RankContext("x = ", "\n", "python", "line")
    copies = [RankInput("1", [], True, "codebase", 0.6), RankInput("(", [], False, "codebase", 0.6)]
    assert LogprobRanker().score(context, copies) == [0.6, 0.3]
