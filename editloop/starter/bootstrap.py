"""Build the starter model end to end: corpus → tokenizer → training → GGUF → registry.

>>> version = bootstrap(load_settings(), BootstrapOptions(size="tiny"))  # doctest: +SKIP
"""

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer

from editloop.corpus import DEFAULT_EXCLUDE, Corpus, load_corpus
from editloop.errors import CorpusError
from editloop.eval.engine import engine_for
from editloop.eval.fim import evaluate_fim, fim_tasks, heldout_files
from editloop.models.export import load_hf
from editloop.models.publish import DEFAULT_QUANTS, export_verified
from editloop.models.registry import ModelVersion, Registry
from editloop.models.shipped import MANIFEST as SHIPPED_MANIFEST
from editloop.models.shipped import import_shipped
from editloop.settings import Settings
from editloop.starter import SHIPPED_DIR
from editloop.starter.tokenizer import train_tokenizer
from editloop.starter.trainer import SIZES, StarterSize, StarterTrainer, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapOptions:
    size: str = "small"
    sources: tuple[str, ...] = ("stdlib",)
    languages: tuple[str, ...] = ("python",)
    minutes: float | None = None
    steps: int | None = None
    line_steps: int | None = None
    seed: int = 0
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    fresh: bool = False
    activate: bool = True
    quants: tuple[str, ...] = DEFAULT_QUANTS
    eval_tasks: int | None = None


def bootstrap(settings: Settings, options: BootstrapOptions, console: Console | None = None) -> ModelVersion:
    """Train, export, verify, evaluate and publish a starter model; activate it unless told not to."""
    console = console or Console(stderr=True)
    threads = _set_threads(settings)
    size = _size(options)
    corpus = load_corpus(
        list(options.sources),
        set(options.languages),
        exclude=options.exclude,
        max_bytes=size.max_corpus_bytes,
    )
    console.print(f"corpus: {corpus.describe()}")
    work_dir = settings.runs_dir / f"bootstrap-{size.name}-seed{options.seed}"
    if options.fresh:
        shutil.rmtree(work_dir, ignore_errors=True)
    tokenizer = _tokenizer(corpus, size, work_dir)
    trainer = StarterTrainer(size, tokenizer, corpus.train, corpus.heldout, work_dir, options.seed)
    result = _train(trainer, options.minutes, console)
    console.print(
        f"trained {result.steps} steps + {result.line_steps} line-completion steps, {result.tokens} tokens, "
        f"{result.tokens_per_s:.0f} tokens/s ({'bf16' if trainer.bf16 else 'fp32: this CPU has no bf16'}), "
        f"train loss {result.train_loss:.3f}, held-out loss {result.val_loss:.3f}"
    )
    registry = Registry(settings.models_dir)
    with registry.stage() as staging:
        trainer.save_hf(staging / "hf")
        model, hf_tokenizer = load_hf(staging / "hf")
        exported, checks = export_verified(model, hf_tokenizer, staging, options.quants, threads)
        console.print(f"export verified: {json.dumps(checks)}")
        training_data = _training_data(corpus, options, size, result)
        quant = "q8_0" if "q8_0" in exported.files else next(iter(exported.files))
        heldout = _evaluate(exported.files[quant], exported.fim, training_data, options, size, threads)
        console.print(f"held-out FIM ({quant}): {json.dumps(heldout)}")
        version = registry.publish(
            staging,
            kind="starter",
            fim=exported.fim,
            arch=exported.arch,
            gguf={q: p.name for q, p in exported.files.items()},
            hf_dir="hf",
            tokenizer="hf/tokenizer.json",
            training_data=training_data,
            metrics={"train": dataclasses.asdict(result), "heldout_fim": heldout | {"quant": quant}},
            checks=checks,
        )
    if options.activate:
        registry.activate(version.name)
    console.print(f"published {version.name}{' (active)' if options.activate else ''}: {version.path}")
    return version


def _evaluate(gguf: Path, fim, training_data: dict, options: BootstrapOptions, size, threads: int) -> dict:
    """Held-out FIM through the serving engine, on the tasks `editloop eval fim VERSION` scores."""
    from editloop.models.llama import LlamaBackend

    n = options.eval_tasks or size.eval_tasks
    tasks = fim_tasks(heldout_files(training_data), n, seed=0)
    backend = LlamaBackend(gguf, fim, gguf.name, n_threads=threads)
    try:
        return evaluate_fim(engine_for(backend), tasks, seed=0).to_dict()
    finally:
        backend.close()


def ensure_starter_model(settings: Settings, size: str = "small") -> ModelVersion:
    """The active version; when there is none, the shipped starter imported, else one built here.

    Importing takes seconds where building ``small`` takes 17 to 75 minutes on 2 cores.
    """
    registry = Registry(settings.models_dir)
    current = registry.current()
    if current is not None:
        return registry.verify(current.name)
    shipped = settings.starter_dir or SHIPPED_DIR / size
    if settings.starter_dir is not None or (shipped / SHIPPED_MANIFEST).is_file():
        version = import_shipped(registry, shipped)
        log.info("imported the shipped starter %s as %s", shipped, version.name)
        return registry.activate(version.name)
    log.info("no shipped starter in %s: building the %s starter here", shipped, size)
    return bootstrap(settings, BootstrapOptions(size=size))


def corpus_digest(training_data: dict) -> str | None:
    """The digest of the corpus a starter was trained on, read again from this machine.

    None when ``training_data`` does not name a corpus this way, or when the files found here
    differ from the ones it counted (another Python's standard library, say).
    """
    try:
        corpus = load_corpus(
            list(training_data["sources"]),
            set(training_data["languages"]),
            exclude=tuple(training_data["exclude"]),
            max_bytes=training_data["size"]["max_corpus_bytes"],
        )
    except (KeyError, TypeError, CorpusError):
        return None
    return corpus.digest() if corpus.describe() == training_data.get("corpus") else None


def _size(options: BootstrapOptions) -> StarterSize:
    size = SIZES[options.size]
    if options.line_steps is not None:
        size = dataclasses.replace(size, line_steps=options.line_steps)
    if options.steps is not None:
        return dataclasses.replace(size, steps=options.steps)
    if options.minutes is not None:
        return dataclasses.replace(size, steps=None)
    return size


def _set_threads(settings: Settings) -> int:
    threads = settings.torch_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def _tokenizer(corpus: Corpus, size: StarterSize, work_dir: Path) -> Tokenizer:
    """Reuse the run's tokenizer when resuming on the same corpus, so checkpoints stay valid."""
    fingerprint = hashlib.sha256("\0".join(f.path for f in corpus.train).encode()).hexdigest()
    path, stamp = work_dir / "tokenizer.json", work_dir / "tokenizer.corpus-sha256"
    if path.exists() and stamp.exists() and stamp.read_text() == f"{fingerprint}:{size.vocab_size}":
        return Tokenizer.from_file(str(path))
    shutil.rmtree(work_dir, ignore_errors=True)  # a new tokenizer invalidates any checkpoint here
    work_dir.mkdir(parents=True)
    tokenizer = train_tokenizer((f.text for f in corpus.train), size.vocab_size)
    tokenizer.save(str(path))
    stamp.write_text(f"{fingerprint}:{size.vocab_size}")
    return tokenizer


def _train(trainer: StarterTrainer, minutes: float | None, console: Console) -> TrainResult:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[tps]:.0f} tok/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(
            f"training {trainer.size.name}", total=trainer.all_steps, loss=float("nan"), tps=0.0
        )

        def on_step(step: int, total: int, loss: float, tps: float) -> None:
            progress.update(bar, completed=step, total=total or None, loss=loss, tps=tps)
            if not console.is_terminal and total and step % max(1, total // 20) == 0:
                # Logs and CI have no live bar: leave a line every 5% instead, with the bar's own
                # time remaining (the same recipe runs 4x longer on some 2-core CPUs than on others).
                left = _time_left(next(t.time_remaining for t in progress.tasks if t.id == bar))
                console.print(f"step {step}/{total} loss {loss:.3f} {tps:.0f} tok/s, {left} left")

        return trainer.run(minutes, on_step)


def _time_left(seconds: float | None) -> str:
    if seconds is None:
        return "? s"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _training_data(corpus: Corpus, options: BootstrapOptions, size: StarterSize, result: TrainResult) -> dict:
    return {
        "sources": list(options.sources),
        "languages": list(options.languages),
        "exclude": list(options.exclude),
        "corpus": corpus.describe(),
        "corpus_digest": corpus.digest(),
        "seed": options.seed,
        "size": dataclasses.asdict(size) | {"steps": result.steps},
        "reproduce": f"editloop bootstrap-model --size {size.name} --steps {result.steps} "
        f"--line-steps {result.line_steps} --seed {options.seed} "
        + " ".join(f"--corpus {s}" for s in options.sources),
    }
