"""LSP latency: ``textDocument/inlineCompletion`` round trips over stdio; prints one JSON object.

A pygls client starts ``editloop lsp`` (in-process engine on the current model, or a tiny starter
model built into a temporary home when there is none) and asks for inline completions at cursor
positions in real standard-library files, each in its own open document:

- ``inline_invoked_n1`` / ``inline_invoked_n3``: an Invoked request decoding 1 and 3 candidates;
- ``inline_automatic_n3``: an Automatic request (debounce 0), 3 candidates, the best one shown;
- ``typeahead_cache_hit``: the user typed the first character of the shown completion; the next
  request is answered from the completion cache.

The completion cache is off for the timed miss runs. Run: ``.venv/bin/python benchmarks/lsp.py``.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient
from serving import cursor_positions, percentiles

from editloop.models.registry import Registry
from editloop.settings import Settings, load_settings
from editloop.starter.bootstrap import BootstrapOptions, bootstrap

CAPABILITIES = types.ClientCapabilities(
    text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities()
    )
)


def position_of(prefix: str) -> types.Position:
    line = prefix.count("\n")
    last = prefix[prefix.rfind("\n") + 1 :]
    return types.Position(line=line, character=len(last.encode("utf-16-le")) // 2)


async def start_lsp(settings: Settings, candidates: int, cache: bool) -> LanguageClient:
    client = LanguageClient("bench", "0")
    env = {
        **os.environ,
        "EDITLOOP_HOME": str(settings.home),
        "EDITLOOP_ABSTAIN_THRESHOLD": "0",
        "EDITLOOP_CACHE_ENTRIES": "100" if cache else "0",
    }
    await client.start_io(sys.executable, "-m", "editloop", "lsp", env=env)
    options = {"debounceMs": 0, "candidates": candidates, "telemetry": False}
    await client.initialize_async(
        types.InitializeParams(capabilities=CAPABILITIES, initialization_options=options)
    )
    client.initialized(types.InitializedParams())
    return client


async def stop_lsp(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


async def inline(client: LanguageClient, uri: str, at: types.Position, trigger) -> list:
    params = types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=trigger),
        text_document=types.TextDocumentIdentifier(uri),
        position=at,
    )
    reply = await client.text_document_inline_completion_async(params)
    return list(reply.items) if reply else []


async def time_inline(settings, prompts, candidates: int, trigger) -> dict:
    client = await start_lsp(settings, candidates, cache=False)
    samples, shown = [], 0
    try:
        await inline_warmup(client, prompts[0])
        for i, (prefix, suffix) in enumerate(prompts):
            uri = f"file:///bench/doc{i}.py"
            item = types.TextDocumentItem(uri, "python", 1, prefix + suffix)
            client.text_document_did_open(types.DidOpenTextDocumentParams(item))
            started = time.perf_counter()
            items = await inline(client, uri, position_of(prefix), trigger)
            samples.append(time.perf_counter() - started)
            shown += bool(items)
    finally:
        await stop_lsp(client)
    return {**percentiles(samples), "with_items": shown}


async def inline_warmup(client: LanguageClient, prompt: tuple[str, str]) -> None:
    """The first request waits for the model to load; it is not a latency sample."""
    uri = "file:///bench/warmup.py"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 1, prompt[0] + prompt[1]))
    )
    await inline(client, uri, position_of(prompt[0]), types.InlineCompletionTriggerKind.Invoked)


async def time_typeahead(settings, prompts) -> list[float]:
    client = await start_lsp(settings, 3, cache=True)
    samples = []
    try:
        await inline_warmup(client, prompts[0])
        for i, (prefix, suffix) in enumerate(prompts):
            uri = f"file:///bench/typeahead{i}.py"
            item = types.TextDocumentItem(uri, "python", 1, prefix + suffix)
            client.text_document_did_open(types.DidOpenTextDocumentParams(item))
            at = position_of(prefix)
            items = await inline(client, uri, at, types.InlineCompletionTriggerKind.Invoked)
            if not items or not items[0].insert_text.strip():
                continue
            typed = items[0].insert_text[0]
            change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text=typed)
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(uri=uri, version=2), [change]
                )
            )
            after = types.Position(line=at.line, character=at.character + len(typed.encode("utf-16-le")) // 2)
            started = time.perf_counter()
            await inline(client, uri, after, types.InlineCompletionTriggerKind.Automatic)
            samples.append(time.perf_counter() - started)
    finally:
        await stop_lsp(client)
    return samples


async def run(settings: Settings, prompts) -> dict:
    invoked, automatic = (
        types.InlineCompletionTriggerKind.Invoked,
        types.InlineCompletionTriggerKind.Automatic,
    )
    return {
        "inline_invoked_n1": await time_inline(settings, prompts, 1, invoked),
        "inline_invoked_n3": await time_inline(settings, prompts, 3, invoked),
        "inline_automatic_n3": await time_inline(settings, prompts, 3, automatic),
        "typeahead_cache_hit": percentiles(await time_typeahead(settings, prompts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    prompts = cursor_positions(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings()
        if Registry(settings.models_dir).current() is None:
            settings = load_settings(home=Path(tmp))
            bootstrap(settings, BootstrapOptions(size="tiny"))
        version = Registry(settings.models_dir).load_verified_current()
        report = asyncio.run(run(settings, prompts))
    print(json.dumps({"model": version.name, "cpus": os.cpu_count(), **report}, indent=2))


if __name__ == "__main__":
    main()
