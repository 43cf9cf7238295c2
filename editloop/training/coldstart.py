"""Cold start: fine-tune the current model on a team's own code before any feedback exists.

FIM samples come from the syntax tree of every tracked source file (a git repository's tracked
files, or a directory; read by :mod:`editloop.corpus`): function bodies, statements,
right-hand sides and return values, and call arguments — the spans an editor asks to complete.
Files are split into train and held-out by a hash of their path; SFT trains a LoRA adapter on
the train samples and the held-out completion loss is measured before and after. With
``publish`` the adapter is merged, exported, verified and published as a new version.

>>> report = cold_start(load_settings(), ColdStartOptions(repo=Path("~/src/app")))  # doctest: +SKIP
>>> report.heldout_loss_before, report.heldout_loss_after  # doctest: +SKIP
(3.91, 3.42)
"""

import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from tree_sitter import Node, Parser

from editloop.completion.context.workspace import Workspace
from editloop.completion.syntax import load_grammar
from editloop.corpus import SourceFile, heldout_bucket, read_files
from editloop.errors import ModelError, TrainingDataError
from editloop.models.registry import ModelVersion, Registry
from editloop.settings import Settings
from editloop.training.launch import launch_for, run_sft_stage
from editloop.training.prompts import FimExample
from editloop.training.sft import SftConfig, SftReport, completion_loss

KINDS = ("body", "statement", "expression", "arguments")
FUNCTIONS = {"function_definition", "function_item", "method_declaration", "constructor_declaration"}
BLOCKS = {"block", "declaration_list"}  # whose named children are statements
ARGUMENTS = {"argument_list", "arguments"}
VALUE_FIELDS = ("right", "value")  # assignment right-hand sides, let / variable initialisers
RETURNS = {"return_statement", "return_expression"}
MAX_PREFIX_CHARS, MAX_SUFFIX_CHARS = 16_000, 4_000  # more than any prompt budget keeps


@dataclass(frozen=True)
class SpanLimits:
    max_chars: int = 400
    max_lines: int = 10


@dataclass(frozen=True)
class ColdStartOptions:
    repo: Path
    languages: tuple[str, ...] = ("python", "java", "rust")
    max_samples: int = 2000
    per_file: int = 8
    heldout_fraction: float = 0.1
    heldout_samples: int = 64
    seed: int = 0
    # Share of samples whose prompt carries the repository's context (definitions, similar code
    # from other files) as the server gathers it: the model learns to use it, and to do without.
    context_share: float = 0.5
    sft: SftConfig = field(default_factory=SftConfig)
    publish: bool = False
    activate: bool = False


@dataclass
class ColdStartReport:
    base_version: str
    files: int
    train_samples: int
    heldout_samples: int
    samples_by_lines: dict[str, int]  # single-line (line mode) and multi-line (block mode) targets
    sft: SftReport
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    seconds: float
    published: str | None = None
    context_samples: int = 0  # training samples whose prompt carries repository context

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sft": self.sft.to_dict()}


def fim_spans(file: SourceFile, limits: SpanLimits = SpanLimits()) -> dict[str, list[tuple[int, int]]]:
    """Byte spans of completable code in ``file``, by kind; none for a language without a grammar."""
    grammar = load_grammar(file.language)
    spans: dict[str, list[tuple[int, int]]] = {kind: [] for kind in KINDS}
    if grammar is None:
        return spans
    data = file.text.encode("utf-8")
    tree = Parser(grammar).parse(data)
    for kind, (start, end) in _candidates(tree.root_node):
        trimmed = _trim(data, start, end)
        if trimmed is not None and _fits(data[trimmed[0] : trimmed[1]], limits):
            spans[kind].append(trimmed)
    return spans


def _candidates(root: Node) -> Iterator[tuple[str, tuple[int, int]]]:
    pending = [root]
    while pending:
        node = pending.pop()
        pending.extend(reversed(node.children))
        if node.has_error:
            continue
        if node.type in FUNCTIONS and (body := node.child_by_field_name("body")) is not None:
            yield "body", _body(body)
        if node.type in BLOCKS:
            for child in node.named_children:
                if "comment" not in child.type:
                    yield "statement", (child.start_byte, child.end_byte)
        for name in VALUE_FIELDS:
            value = node.child_by_field_name(name)
            if value is not None and value.is_named:
                yield "expression", (value.start_byte, value.end_byte)
        if node.type in RETURNS and node.named_children:
            yield "expression", (node.named_children[0].start_byte, node.end_byte)
        if node.type in ARGUMENTS and node.named_child_count:
            yield "arguments", _inside(node)


def _body(block: Node) -> tuple[int, int]:
    """A function's body; after its docstring, which documents the code rather than being it."""
    statements = block.named_children
    first = statements[0] if statements else None
    is_docstring = (
        first is not None
        and first.type == "expression_statement"
        and first.named_children
        and (first.named_children[0].type == "string")
    )
    if is_docstring and len(statements) > 1:
        return statements[1].start_byte, block.end_byte
    return _inside(block)


def _inside(node: Node) -> tuple[int, int]:
    """A bracketed node's content without its brackets; an indented Python block as it is."""
    children = node.children
    if len(children) >= 2 and children[0].type in ("{", "(") and children[-1].type in ("}", ")"):
        return children[0].end_byte, children[-1].start_byte
    return node.start_byte, node.end_byte


def _trim(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """Leading and trailing whitespace go to the prefix and suffix: the cursor sits after indentation."""
    text = data[start:end]
    stripped = text.strip()
    if not stripped:
        return None
    lead = len(text) - len(text.lstrip())
    return start + lead, start + lead + len(stripped)


def _fits(middle: bytes, limits: SpanLimits) -> bool:
    return (
        len(middle) <= limits.max_chars
        and middle.count(b"\n") < limits.max_lines
        and any(chr(c).isalnum() for c in middle if c < 128)
    )


def file_samples(
    file: SourceFile, per_file: int, seed: int, limits: SpanLimits = SpanLimits()
) -> list[FimExample]:
    """Up to ``per_file`` samples, taking kinds in turn so no kind crowds out the others."""
    spans = fim_spans(file, limits)
    rng = random.Random(f"{seed}:{file.path}")
    for found in spans.values():
        rng.shuffle(found)
    chosen: list[tuple[int, int]] = []
    while len(chosen) < per_file and any(spans.values()):
        for kind in KINDS:
            if spans[kind] and len(chosen) < per_file:
                chosen.append(spans[kind].pop())
    data = file.text.encode("utf-8")
    return [_example(file, data, start, end) for start, end in dict.fromkeys(chosen)]


def _example(file: SourceFile, data: bytes, start: int, end: int) -> FimExample:
    prefix, middle, suffix = (data[:start].decode(), data[start:end].decode(), data[end:].decode())
    if len(prefix) > MAX_PREFIX_CHARS:
        cut = prefix.find("\n", len(prefix) - MAX_PREFIX_CHARS)
        prefix = prefix[cut + 1 :] if cut >= 0 else prefix[-MAX_PREFIX_CHARS:]
    if len(suffix) > MAX_SUFFIX_CHARS:
        suffix = suffix[: suffix.rfind("\n", 0, MAX_SUFFIX_CHARS) + 1 or MAX_SUFFIX_CHARS]
    filepath = file.path.split("/", 1)[-1]  # drop the corpus label, keep the repository path
    return FimExample(prefix, suffix, middle, file.language, filepath)


def extract_samples(
    files: list[SourceFile], max_samples: int, per_file: int, seed: int, limits: SpanLimits = SpanLimits()
) -> list[FimExample]:
    """Samples from every file, then an even random subset when there are more than ``max_samples``."""
    samples = [s for f in files for s in file_samples(f, per_file, seed, limits)]
    if len(samples) > max_samples:
        samples = random.Random(seed).sample(samples, max_samples)
    return samples


def with_repo_context(
    samples: list[FimExample], files: list[SourceFile], share: float, seed: int
) -> list[FimExample]:
    """``share`` of the samples (drawn by ``seed``) with the snippets the server would gather from
    the other files of their repository: repository-level samples, at the cost of one index."""
    if share <= 0 or not samples:
        return samples
    workspace = Workspace.in_memory([(f.path.split("/", 1)[-1], f.text) for f in files], "cold-start")
    rng = random.Random(f"{seed}:context")
    return [
        replace(s, extra=tuple(workspace.gather(s.filepath, s.prefix, s.suffix)))
        if rng.random() < share
        else s
        for s in samples
    ]


def split_files(
    files: list[SourceFile], heldout_fraction: float
) -> tuple[list[SourceFile], list[SourceFile]]:
    """Train and held-out files by path hash; a repository too small to split trains on everything."""
    heldout = [f for f in files if heldout_bucket(f.path) < heldout_fraction]
    train = [f for f in files if heldout_bucket(f.path) >= heldout_fraction]
    return (train, heldout) if train else (files, [])


def base_checkpoint(settings: Settings) -> ModelVersion:
    """The current version, which must carry an HF checkpoint to train."""
    registry = Registry(settings.models_dir)
    current = registry.current()
    if current is None:
        raise ModelError(
            "no model is active: run `editloop bootstrap-model` or `editloop models import` first"
        )
    version = registry.verify(current.name)
    if version.hf_path() is None:
        raise ModelError(
            f"version {version.name} has no HF checkpoint to train; import it with --hf DIR "
            "(e.g. `editloop models import MODEL.gguf --hf ./checkpoint`)"
        )
    return version


def cold_start(
    settings: Settings, options: ColdStartOptions, console: Console | None = None
) -> ColdStartReport:
    """Extract samples from the repository, fine-tune the current model, optionally publish it."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    version = base_checkpoint(settings)
    base_dir = version.hf_path()
    assert base_dir is not None
    files = read_files([str(options.repo)], set(options.languages))
    train_files, heldout_files = split_files(files, options.heldout_fraction)
    train = extract_samples(train_files, options.max_samples, options.per_file, options.seed)
    heldout = extract_samples(heldout_files, options.heldout_samples, options.per_file, options.seed)
    train, heldout = (
        with_repo_context(s, files, options.context_share, options.seed) for s in (train, heldout)
    )
    if not train:
        raise TrainingDataError(f"no completable spans found in {len(files)} file(s) of {options.repo}")
    console.print(f"cold start: {len(files)} files, {len(train)} train and {len(heldout)} held-out samples")
    run_dir = settings.runs_dir / f"coldstart-{time.strftime('%Y%m%d-%H%M%S')}"
    loss_before = _heldout_loss(base_dir, heldout, options.sft, None)
    sft = run_sft_stage(launch_for(settings), base_dir, train, run_dir / "sft", options.sft, console=console)
    loss_after = _heldout_loss(base_dir, heldout, options.sft, sft.adapter_dir)
    report = ColdStartReport(
        base_version=version.name,
        files=len(files),
        train_samples=len(train),
        heldout_samples=len(heldout),
        samples_by_lines=_count_lines(train),
        sft=sft,
        heldout_loss_before=loss_before,
        heldout_loss_after=loss_after,
        seconds=0.0,
        context_samples=sum(bool(s.extra) for s in train),
    )
    if options.publish:
        report.published = _publish(settings, version, sft, options, report).name
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _heldout_loss(
    base_dir: Path, samples: list[FimExample], config: SftConfig, adapter: Path | None
) -> float | None:
    if not samples:
        return None
    return completion_loss(base_dir, samples, adapter, config.max_new_tokens, config.max_context)


def _count_lines(samples: list[FimExample]) -> dict[str, int]:
    lines = [s.reference.count("\n") + 1 for s in samples]
    return {"single_line": sum(n == 1 for n in lines), "multi_line": sum(n > 1 for n in lines)}


def _publish(
    settings: Settings,
    version: ModelVersion,
    sft: SftReport,
    options: ColdStartOptions,
    report: ColdStartReport,
) -> ModelVersion:
    from editloop.models.publish import publish_checkpoint

    base_dir = version.hf_path()
    assert base_dir is not None
    return publish_checkpoint(
        settings,
        base_dir,
        adapter_dir=sft.adapter_dir,
        parent=version.name,
        activate=options.activate,
        threads=settings.torch_threads or 2,
        kind="retrain",
        training_data={
            "source": "coldstart",
            "repo": str(options.repo),
            "languages": list(options.languages),
        },
        metrics={
            "coldstart": {
                "train_samples": report.train_samples,
                "heldout_samples": report.heldout_samples,
                "heldout_loss_before": report.heldout_loss_before,
                "heldout_loss_after": report.heldout_loss_after,
                "sft": sft.to_dict(),
            }
        },
    )
