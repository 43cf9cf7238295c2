"""A model behind an OpenAI-compatible ``/v1/completions`` server (vLLM, llama.cpp's, llama-cpp-python's).

The engine builds token ids with the local tokenizer (the model's ``tokenizer.json``); they go
to the server as text with the special tokens spelled out, which such servers parse back into
the same ids. (So a special-token name written in user code reaches the model as that token
here, unlike in-process.) Candidate 0 is a greedy request of its own, sent alongside the
sampled one, because one OpenAI request has one temperature.

>>> backend = RemoteBackend("http://gpu-box:8000", "qwen2.5-coder-1.5b", Path("tokenizer.json"),
...                         QWEN, version="remote-qwen", n_ctx=4096)
>>> backend.generate(prompt_ids, GenerationParams(n=4, max_tokens=32)).generations[0].text
"""

import dataclasses
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
from tokenizers import Tokenizer

from editloop.clients import bearer
from editloop.errors import BackendError, ModelError
from editloop.models.backend import FinishReason, Generation, GenerationParams, GenerationResult
from editloop.models.fim import FimTemplate

# How often a waiting request looks at the cancel event and the deadline.
POLL_S = 0.01
# Sampling is temperature and top-p, as in the local backend. llama-cpp-python's server adds
# min_p 0.05 and repeat_penalty 1.1 by default, and the penalty makes even its temperature-0
# output differ from argmax; these turn both off and are defaults elsewhere (servers ignore
# fields they do not know). top_k stays unset: vLLM rejects 0, llama-cpp-python's server -1.
NEUTRAL_SAMPLING = {"min_p": 0.0, "repeat_penalty": 1.0}


class RemoteBackend:
    """Completions from a remote server; implements :class:`~editloop.models.backend.Backend`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer_path: Path,
        fim: FimTemplate,
        version: str,
        n_ctx: int,
        api_key: str | None = None,
        timeout_s: float = 30,
    ) -> None:
        self.version = version
        self.fim = fim
        self.n_ctx = n_ctx
        self.model = model
        self.timeout_s = timeout_s
        self.url = base_url.rstrip("/") + "/v1/completions"
        self._tokenizer = _load_tokenizer(Path(tokenizer_path))
        self._special_ids = {
            i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special
        }
        headers = bearer(api_key)
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="editloop-remote")

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def special_id(self, token: str) -> int | None:
        token_id = self._tokenizer.token_to_id(token)
        return token_id if token_id in self._special_ids else None

    def generate(self, prompt_ids: list[int], params: GenerationParams) -> GenerationResult:
        if len(prompt_ids) > self.n_ctx - params.max_tokens:
            raise ModelError(
                f"prompt of {len(prompt_ids)} tokens plus max_tokens={params.max_tokens} exceeds the "
                f"context of {self.n_ctx} tokens of {self.version}; shorten the prompt"
            )
        prompt = self._tokenizer.decode(prompt_ids, skip_special_tokens=False)
        started = time.monotonic()
        sampled = params.n - 1 if params.temperature > 0 else 0
        jobs: list[Future] = []
        interrupted = params.interruption()
        if not interrupted:
            jobs.append(self._pool.submit(self._choices, prompt, 1, 0.0, params))
            if sampled:
                jobs.append(self._pool.submit(self._choices, prompt, sampled, params.temperature, params))
            interrupted = _wait(jobs, params)
        if interrupted:
            # The requests finish in the background; their answers are dropped.
            generations = [Generation("", [], [], interrupted) for _ in range(params.n)]
        else:
            choices = [choice for job in jobs for choice in job.result()]
            generations = [self._generation(choice) for choice in choices]
            generations += [_copy(generations[0]) for _ in range(params.n - len(generations))]
        return GenerationResult(
            generations=generations,
            prompt_tokens=len(prompt_ids),
            cached_tokens=0,  # servers do not say reliably; prefix caching is theirs to do
            prompt_ms=0.0,
            decode_ms=(time.monotonic() - started) * 1000,
            extra={"requests": len(jobs)},
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # -- requests --------------------------------------------------------------------------

    def _choices(self, prompt: str, n: int, temperature: float, params: GenerationParams) -> list[dict]:
        """``n`` choices, asking again for the rest when a server ignores ``n`` (llama-cpp-python's)."""
        choices: list[dict] = []
        while len(choices) < n:
            got = self._post(
                {
                    "model": self.model,
                    "prompt": prompt,
                    "max_tokens": params.max_tokens,
                    "n": n - len(choices),
                    "temperature": temperature,
                    "top_p": params.top_p if temperature > 0 else 1.0,
                    "stop": [s for s in params.stop if s] or None,
                    "logprobs": 1,
                    "seed": params.seed + len(choices),
                    "return_tokens_as_token_ids": True,  # vLLM: token ids instead of guessing them
                    **NEUTRAL_SAMPLING,
                },
                params.deadline,
            )
            if not got:
                raise BackendError(f"{self.url} answered with no choices")
            choices += got[: n - len(choices)]
        return choices

    def _post(self, payload: dict, deadline: float | None) -> list[dict]:
        timeout = self.timeout_s
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        try:
            response = self._client.post(self.url, json=payload, timeout=timeout)
            response.raise_for_status()
            choices = response.json()["choices"]
        except httpx.HTTPStatusError as exc:
            detail = exc.response.text[:300]
            raise BackendError(f"{self.url} answered {exc.response.status_code}: {detail}") from exc
        except httpx.TimeoutException as exc:
            raise BackendError(f"{self.url} did not answer within {timeout:.1f} s") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {self.url}: {exc}; is the model server running?") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"{self.url} did not answer like an OpenAI completions server") from exc
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise BackendError(f"{self.url} answered choices that are not a list of objects")
        return choices

    # -- replies ---------------------------------------------------------------------------

    def _generation(self, choice: dict) -> Generation:
        text = choice.get("text")
        if not isinstance(text, str):
            raise BackendError(f"{self.url} answered a choice without text")
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        try:
            ids, logprobs = self._tokens(choice.get("logprobs"), text)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"{self.url} answered logprobs in an unknown shape: {exc}") from exc
        return Generation(text, ids, logprobs, finish)

    def _tokens(self, logprobs: Any, text: str) -> tuple[list[int], list[float]]:
        """Token ids and log-probs of the tokens that make up ``text``."""
        if not logprobs:
            return self.tokenize(text), []
        ids, pieces, values = _parse_logprobs(logprobs)
        if ids is None and pieces is not None:
            # Control tokens (a stray FIM marker) come back as empty pieces: no text, no id to find.
            kept_pieces = [(p, v) for p, v in zip(pieces, values, strict=True) if p]
            pieces, values = [p for p, _ in kept_pieces], [v for _, v in kept_pieces]
        if pieces is None:
            pieces = [self._tokenizer.decode([i], skip_special_tokens=True) for i in ids or []]
        # Servers report the tokens of a stop string that was cut from the text; keep those
        # that contribute to the text, as the local backend does.
        kept = _tokens_covering(pieces, len(text))
        ids = ids if ids is not None else self._ids_from_pieces(pieces[:kept], text)
        if ids is None:
            return self.tokenize(text), values[:kept]  # ids re-derived: may not align with values
        return ids[:kept], values[:kept]

    def _ids_from_pieces(self, pieces: list[str], text: str) -> list[int] | None:
        """Each piece's token id, when every piece is one token and together they spell ``text``."""
        if not "".join(pieces).startswith(text):
            return None
        ids = [self._tokenizer.encode(p, add_special_tokens=False).ids for p in pieces]
        return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


def _load_tokenizer(path: Path) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise ModelError(f"cannot read tokenizer {path}: {exc}; point to the model's tokenizer.json") from exc
    # Special-token names inside user code must stay plain text (Backend.tokenize's contract).
    tokenizer.encode_special_tokens = True
    return tokenizer


def _wait(jobs: list[Future], params: GenerationParams) -> FinishReason | None:
    """Wait for ``jobs`` unless cancelled or past the deadline first; then say which."""
    while True:
        done, pending = wait(jobs, timeout=POLL_S, return_when=FIRST_EXCEPTION)
        failed = any(job.exception() for job in done)
        if not pending and not failed:
            return None
        # Checked before failures: a request cut short by the deadline fails with a timeout.
        interrupted = params.interruption()
        if interrupted or failed:
            return interrupted


def _parse_logprobs(logprobs: dict) -> tuple[list[int] | None, list[str] | None, list[float]]:
    """(ids, text pieces, log-probs) from either shape servers use; ids or pieces may be unknown."""
    if isinstance(logprobs.get("content"), list):  # llama.cpp's server: one object per token
        entries = logprobs["content"]
        ids = [int(e["id"]) for e in entries] if all("id" in e for e in entries) else None
        return ids, [str(e["token"]) for e in entries], [float(e["logprob"]) for e in entries]
    names = [str(t) for t in logprobs["tokens"]]
    values = [float(v) for v in logprobs["token_logprobs"]]
    if names and all(n.startswith("token_id:") for n in names):  # vLLM's return_tokens_as_token_ids
        return [int(n.removeprefix("token_id:")) for n in names], None, values
    return None, names, values


def _tokens_covering(pieces: list[str], length: int) -> int:
    """How many leading pieces it takes to reach ``length`` characters of text."""
    covered = 0
    for i, piece in enumerate(pieces):
        if covered >= length:
            return i
        covered += len(piece)
    return len(pieces)


def _copy(generation: Generation) -> Generation:
    return dataclasses.replace(
        generation, token_ids=list(generation.token_ids), logprobs=list(generation.logprobs)
    )
