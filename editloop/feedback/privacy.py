"""Privacy before any write: secrets redacted, opted-out users dropped, code-free and private-path modes.

Every event passes :meth:`Privacy.apply` before it reaches Redis or the spool file, so a secret
typed into an editor never lands on disk (not in the AOF, not in the spool).

>>> redact('key = "AKIAIOSFODNN7EXAMPLE"')
('key = "[REDACTED:aws]"', 1)

Detection: detect-secrets' provider detectors (AWS, GitHub, GitLab, Slack, Stripe, Twilio, JWT,
basic auth in URLs, ...) and its keyword rules (``password = ...``), plus what it lacks here: whole
private-key blocks, newer key formats (OpenAI ``sk-proj-``, Anthropic, Google, Hugging Face, npm),
bearer tokens, and high-entropy tokens whether quoted or not. A redacted token becomes
``[REDACTED:<kind>]`` and the event's ``redacted`` field counts them, so a trainer can skip it.
"""

import hashlib
import math
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from detect_secrets.filters.heuristic import (
    is_indirect_reference,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins import keyword
from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

from editloop.feedback.events import (
    Candidate,
    CompletionEvent,
    ContextSnippet,
    EditedEvent,
    FeedbackEvent,
    RetainedEvent,
    path_hash,
)

# Detectors whose regexes are exact token shapes. Left out: IP addresses (not secrets), the
# keyword-shaped IBM/Cloudant/Softlayer ones (the keyword rules below cover them), and the
# private-key and entropy plugins, which are handled below on whole blocks and unquoted tokens.
PROVIDER_DETECTORS: dict[str, type[RegexBasedDetector]] = {
    "artifactory": ArtifactoryDetector,
    "aws": AWSKeyDetector,
    "azure": AzureStorageKeyDetector,
    "basic-auth": BasicAuthDetector,
    "discord": DiscordBotTokenDetector,
    "github": GitHubTokenDetector,
    "gitlab": GitLabTokenDetector,
    "jwt": JwtTokenDetector,
    "mailchimp": MailchimpDetector,
    "npm": NpmDetector,
    "openai": OpenAIDetector,
    "pypi": PypiTokenDetector,
    "sendgrid": SendGridDetector,
    "slack": SlackDetector,
    "square": SquareOAuthDetector,
    "stripe": StripeDetector,
    "telegram": TelegramBotTokenDetector,
    "twilio": TwilioKeyDetector,
}
EXTRA_PATTERNS: dict[str, str] = {
    "openai": r"\bsk-(?:proj-|svcacct-|admin-|ant-[a-z0-9]+-)?[A-Za-z0-9_\-]{20,}",
    "google": r"\bAIza[0-9A-Za-z_\-]{35}",
    "github": r"\bgithub_pat_[A-Za-z0-9_]{22,}",
    "huggingface": r"\bhf_[A-Za-z0-9]{30,}",
    "npm": r"\bnpm_[A-Za-z0-9]{36}",
    "stripe": r"\b[rsp]k_(?:live|test)_[0-9a-zA-Z]{16,}",
    "bearer": r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{16,}=*)",
    "aws": r"(?i)aws_?secret_?access_?key\s*[=:]\s*[\"']?([A-Za-z0-9/+=]{40})",
}
PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)"
    r"|PuTTY-User-Key-File-\d.*?(?:Private-MAC:[^\n]*|\Z)",
    re.DOTALL,
)
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/=")
# Runs of key characters; '=' only as base64 padding, so `x=1234` stays two tokens.
CANDIDATE_TOKEN = re.compile(r"[A-Za-z0-9_\-+/]{16,}={0,2}")
WORD_RUNS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
WORDY_RUN = 3.0
# detect-secrets' rules, plus a typed assignment (`password: str = "..."`), which they miss.
ANNOTATED_ASSIGNMENT = re.compile(
    rf"{keyword.DENYLIST_REGEX}\s*:\s*[\w\[\]., |]+?\s*=\s*([\'\"`])([^\v\'\"`]+)(\2)", re.IGNORECASE
)
# Names detect-secrets' list lacks: API_TOKEN=..., access_key: ..., credentials = "...".
EXTRA_KEYWORDS = r"(?:token|access_?key|secret_?key|credentials?|auth_?token)\w*"
EXTRA_ASSIGNMENT = re.compile(
    rf"{EXTRA_KEYWORDS}\s*(?::\s*[\w\[\]., |]+?)?\s*(?:=|:=|=>|:)\s*([\'\"`]?)([^\s\'\"`,;]+)(\1)",
    re.IGNORECASE,
)
# Shell and .env assignments (`DB_PASSWORD=CorrectHorseBatteryStaple`, `export API_TOKEN=...`):
# an upper-case name ending in a secret's word, `=` with no spaces. The value is literal text
# there, so it counts even when it reads like an identifier (in code it would be a variable).
ENV_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.$])(?:[A-Z][A-Z0-9_]*?)?"
    r"(?:PASSWORD|PASSWD|_PASS|SECRET|TOKEN|CREDENTIALS?|(?:API|ACCESS|AUTH|PRIVATE|SECRET|SIGNING|ENCRYPTION)_?KEY)"
    r"=([\'\"]?)([^\s\'\"`;&|)]+)(\1)"
)
# Command-line flags that carry a password: `--password=...`, `--token=...`.
FLAG_ASSIGNMENT = re.compile(
    r"(?<![\w-])--(?:password|passwd|pass|token|api-key|secret)=([\'\"]?)([^\s\'\"`;&|)]+)(\1)",
    re.IGNORECASE,
)
# (rule, group of the value, whether the value must also look like a key: "token" names many
# things in code, `token_type = 'phrase'`, where "password" names one; whether the value is
# literal text, as in a shell line, rather than code)
KEYWORD_RULES = [
    *((rx, group, False, False) for rx, group in keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP.items()),
    *((rx, group, False, False) for rx, group in keyword.CONFIG_DENYLIST_REGEX_TO_GROUP.items()),
    (ANNOTATED_ASSIGNMENT, 3, False, False),
    (EXTRA_ASSIGNMENT, 2, True, False),
    (ENV_ASSIGNMENT, 2, False, True),
    (FLAG_ASSIGNMENT, 2, False, True),
]
# MySQL's clients take the password glued to -p (`mysql -uroot -pMyCliPa55`); `-p` alone prompts.
MYSQL_PASSWORD = re.compile(
    r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mysqlcheck|mariadb\S*)\b[^\n]*?"
    r"(?<=\s)-p([^\s\'\"`;&|]+)"
)
# A quoted short hex or random value assigned to a name ending in "key" (`key = "a9f3c2e7b1d4"`,
# `hmacKey: 'f00d...'`): too short for the entropy rule. "monkey" and "keyboard" are not key names.
KEY_ASSIGNMENT = re.compile(
    r"(?:(?<![A-Za-z0-9])[Kk]ey|_[Kk]ey|(?<=[a-z0-9])Key|KEY)[sS]?[\'\"]?"
    r"\s*(?::\s*[\w\[\]., |]+?)?\s*(?:=|:=|=>|:)\s*([\'\"`])([^\s\'\"`]{8,})(\1)"
)
MIN_HEX_KEY = 8
# Git object ids (SHA-1, SHA-256) are random hex but public: a 40- or 64-hex token on a line that
# speaks of git (`git checkout <sha>`, `commit = "<sha>"`, `.../commit/<sha>`, `rev: <sha>`) is
# one. Elsewhere (`webhook_digest = '<40 hex>'`) random hex still reads as a key.
GIT_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
GIT_CONTEXT = re.compile(
    r"(?<![A-Za-z])(?:git|commit|commits|sha|sha1|sha256|rev|revision|checkout|cherry-pick|rebase|"
    r"merge|blob|tree|parent|head|ref|oid)(?![A-Za-z])",
    re.IGNORECASE,
)
KEYWORD_LINE = re.compile(rf"{keyword.DENYLIST_REGEX}|{EXTRA_KEYWORDS}", re.IGNORECASE)
CODE_WORDS = frozenset(
    ["none", "null", "nil", "undefined", "true", "false", "self", "this", "str", "string", "int", "bytes"]
)
CODE_CHARS = frozenset(" \t=+()[]{}<>,\"'`")
MARK = "[REDACTED"
MIN_SECRET = 4
MIN_KEYISH = 8
ENTROPY_SLACK = 1.0
MIN_BASE64 = 20  # shorter mixed tokens are mostly identifiers (v4_int_to_packed)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


@cache
def _detectors() -> list[tuple[str, re.Pattern]]:
    compiled = [(kind, rx) for kind, cls in PROVIDER_DETECTORS.items() for rx in cls().denylist]
    return compiled + [(kind, re.compile(rx)) for kind, rx in EXTRA_PATTERNS.items()]


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """A match may cover part of a token (detect-secrets' GitHub rule captures just ``ghp``): take it all."""
    while start > 0 and text[start - 1] in TOKEN_CHARS:
        start -= 1
    while end < len(text) and text[end] in TOKEN_CHARS:
        end += 1
    return start, end


def _provider_spans(text: str) -> Iterator[Span]:
    for kind, regex in _detectors():
        for match in regex.finditer(text):
            groups = [i for i in range(1, (regex.groups or 0) + 1) if match.group(i)]
            group = groups[-1] if groups and len(match.group(groups[-1])) >= 8 else 0
            start, end = _widen(text, *match.span(group))
            yield Span(start, end, kind)


def _keyword_spans(text: str) -> Iterator[Span]:
    seen: set[int] = set()
    for match in KEYWORD_LINE.finditer(text):  # one pass over the text, then only the lines that matched
        start = text.rfind("\n", 0, match.start()) + 1
        if start in seen:
            continue
        seen.add(start)
        end = text.find("\n", match.end())
        line = text[start : end if end >= 0 else len(text)]
        for value_start, value_end in _keyword_values(line):
            yield Span(start + value_start, start + value_end, "keyword")


def _keyword_values(line: str) -> Iterator[tuple[int, int]]:
    for regex, group, strict, literal in KEYWORD_RULES:
        for match in regex.finditer(line):
            value = match.group(group).strip()
            start = match.start(group) + match.group(group).index(value) if value else 0
            quoted = literal or (start > 0 and line[start - 1] in "'\"`")
            if strict and not _keyish(value):
                continue
            if _plausible_secret(value, line, quoted):
                yield start, start + len(value)


def _command_spans(text: str) -> Iterator[Span]:
    """Secrets whose shape is a command line or a key name rather than a keyword line."""
    for match in MYSQL_PASSWORD.finditer(text):
        if len(match.group(1)) >= MIN_SECRET and not is_prefixed_with_dollar_sign(match.group(1)):
            yield Span(*match.span(1), "keyword")
    for match in KEY_ASSIGNMENT.finditer(text):
        value = match.group(2)
        if _hex_key(value) or high_entropy(value):
            yield Span(*match.span(2), "keyword")


def _hex_key(value: str) -> bool:
    return (
        len(value) >= MIN_HEX_KEY
        and all(c in "0123456789abcdefABCDEF" for c in value)
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    )


def _keyish(value: str) -> bool:
    return len(value) >= MIN_KEYISH and any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _plausible_secret(value: str, line: str, quoted: bool) -> bool:
    if len(value) < MIN_SECRET or value.startswith(MARK):
        return False
    if is_templated_secret(value) or is_prefixed_with_dollar_sign(value):
        return False
    if quoted:
        return True
    # Unquoted values are often code: `password = get_password()`, `token: str`, `secret = None`,
    # `self.password = password`; a value with a digit or a symbol in it is not.
    return not (
        is_indirect_reference(line)
        or value.lower() in CODE_WORDS
        or any(c in CODE_CHARS for c in value)
        or re.fullmatch(r"[A-Za-z_][A-Za-z_.]*|[0-9.]+", value)
        or (re.fullmatch(r"[A-Za-z_]\w*_\w*", value) is not None and _wordy(value))  # token_ids_0
    )


@cache
def _entropy_plugins() -> tuple[Base64HighEntropyString, HexHighEntropyString]:
    return Base64HighEntropyString(), HexHighEntropyString()


def high_entropy(token: str) -> bool:
    """Random-looking: detect-secrets' entropy measures, with a bar that suits shorter tokens too."""
    if not (any(c.isdigit() for c in token) and any(c.isalpha() for c in token)):
        return False  # identifiers (no digit) and numbers (no letter) are code, not keys
    if is_sequential_string(token) or _wordy(token):
        return False
    base64, hexadecimal = _entropy_plugins()
    if all(c in "0123456789abcdefABCDEF" for c in token):
        return hexadecimal.calculate_shannon_entropy(token) > hexadecimal.entropy_limit
    if len(token) < MIN_BASE64:
        return False
    # The most a string of n characters can reach is log2(n); 4.5 (detect-secrets' default for
    # quoted strings) is out of reach below 23 characters, so the bar scales with the length.
    limit = min(base64.entropy_limit, math.log2(len(token)) - ENTROPY_SLACK)
    return base64.calculate_shannon_entropy(token) > limit


def _wordy(token: str) -> bool:
    """Made of words (``IMAP4_server_hostname``, ``InvalidBase64LengthDefect``): random keys are not."""
    runs = WORD_RUNS.findall(token)
    return bool(runs) and sum(map(len, runs)) / len(runs) >= WORDY_RUN


def _entropy_spans(text: str) -> Iterator[Span]:
    for match in CANDIDATE_TOKEN.finditer(text):
        token = match.group(0).strip("-_/+")
        if high_entropy(token) and not _git_object_id(text, match.start(), token):
            yield Span(match.start(), match.end(), "entropy")


def _git_object_id(text: str, at: int, token: str) -> bool:
    if not GIT_OBJECT_ID.fullmatch(token):
        return False
    start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
    return GIT_CONTEXT.search(text, start, end if end >= 0 else len(text)) is not None


def _merge(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = Span(last.start, max(last.end, span.end), last.kind)
        else:
            merged.append(span)
    return merged


def redact(text: str) -> tuple[str, int]:
    """``text`` with every secret found replaced by ``[REDACTED:<kind>]``, and how many were.

    Private-key blocks are found across lines; every other rule looks at one line at a time (a
    keyword and its value, a token and its neighbours share a line), which is what lets
    :class:`Redactor` remember lines it has already seen.
    """
    return _redact(text, redact_line)


def redact_line(line: str) -> tuple[str, int]:
    """One line (no newline in it) redacted by every rule but the private-key block."""
    if len(line) < MIN_SECRET:
        return line, 0
    spans = [*_provider_spans(line), *_keyword_spans(line), *_command_spans(line), *_entropy_spans(line)]
    spans = [s for s in _merge(spans) if not line[s.start : s.end].startswith(MARK)]
    if not spans:
        return line, 0
    parts, cursor = [], 0
    for span in spans:
        parts += [line[cursor : span.start], f"{MARK}:{span.kind}]"]
        cursor = span.end
    parts.append(line[cursor:])
    return "".join(parts), len(spans)


def _redact(text: str, line_redact: Callable[[str], tuple[str, int]]) -> tuple[str, int]:
    if len(text) < MIN_SECRET:
        return text, 0
    parts, found, cursor = [], 0, 0
    for block in PRIVATE_KEY.finditer(text):
        piece, n = _lines(text[cursor : block.start()], line_redact)
        parts += [piece, f"{MARK}:private-key]"]
        found, cursor = found + n + 1, block.end()
    piece, n = _lines(text[cursor:], line_redact)
    return "".join([*parts, piece]), found + n


def _lines(text: str, line_redact: Callable[[str], tuple[str, int]]) -> tuple[str, int]:
    redacted = [line_redact(line) for line in text.split("\n")]
    return "\n".join(line for line, _ in redacted), sum(n for _, n in redacted)


class Redactor:
    """:func:`redact`, remembering the lines it has redacted (least recently used dropped first).

    An editor resends the same file with one line changed on every keystroke's request; scanning
    its 8,000 characters with every rule took ~4 ms of CPU, holding the GIL the decode's Python
    side and the event loop also need. A remembered line costs a dictionary lookup.
    """

    def __init__(self, lines: int = 20_000) -> None:
        self.size = lines
        self._seen: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._lock = threading.Lock()  # the feedback log redacts on a worker thread

    def __call__(self, text: str) -> tuple[str, int]:
        return _redact(text, self.line)

    def line(self, line: str) -> tuple[str, int]:
        with self._lock:
            known = self._seen.get(line)
            if known is not None:
                self._seen.move_to_end(line)
                return known
        redacted = redact_line(line)
        with self._lock:
            self._seen[line] = redacted
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
        return redacted


def redact_path(path: str) -> tuple[str, int]:
    """``redact`` per path segment: a key-shaped directory goes, the rest of the path (and its
    extension, which names the language) stays.

    >>> redact_path("src/ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8/app.py")
    ('src/[REDACTED:github]/app.py', 1)
    """
    parts = [redact(part) for part in path.split("/")]
    return "/".join(text for text, _ in parts), sum(found for _, found in parts)


def load_hash_key(path: Path) -> bytes:
    """The install's key for code-free hashes, made once (hashes of short code must not be guessable)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_bytes(secrets.token_bytes(32))
        staging.chmod(0o600)
        try:
            os.link(staging, path)  # atomic and exclusive: a racing process keeps the first key
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_bytes()


class Privacy:
    """What may be stored, per the settings; ``apply`` returns each event redacted, or None if dropped.

    >>> Privacy(opt_out_users={"ana"}).apply([ShownEvent(event_id="e", completion_id="c", user="ana")])
    [None]
    """

    def __init__(
        self,
        opt_out_users: Iterable[str] = (),
        code_free: bool = False,
        private_paths: bool = False,
        hash_key: bytes = b"",
    ) -> None:
        self.opt_out_users = frozenset(opt_out_users)
        self.code_free = code_free
        self.private_paths = private_paths
        self.hash_key = hash_key
        self.redact = Redactor()

    @classmethod
    def from_settings(cls, settings) -> "Privacy":
        key = load_hash_key(settings.feedback_dir / "hash.key") if settings.feedback_code_free else b""
        return cls(
            settings.feedback_opt_out_users,
            settings.feedback_code_free,
            settings.feedback_private_paths,
            key,
        )

    def apply(self, events: Iterable[FeedbackEvent]) -> list[FeedbackEvent | None]:
        return [None if e.user in self.opt_out_users else self._who(self._one(e)) for e in events]

    def _who(self, event: FeedbackEvent) -> FeedbackEvent:
        """The user name is client text too (a token pasted as a name is still a token)."""
        user, found = self.redact(event.user)
        return event.model_copy(update={"user": user, "redacted": event.redacted + found}) if found else event

    def text_hash(self, text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "replace"), key=self.hash_key, digest_size=16).hexdigest()

    def _one(self, event: FeedbackEvent) -> FeedbackEvent:
        if isinstance(event, CompletionEvent):
            return self._completion(event)
        if isinstance(event, RetainedEvent | EditedEvent):
            if self.code_free:
                return event.model_copy(
                    update={
                        "text": "",
                        "text_hash": self.text_hash(event.text),
                        "text_chars": len(event.text),
                        "code_free": True,
                    }
                )
            text, found = self.redact(event.text)
            return (
                event.model_copy(update={"text": text, "redacted": event.redacted + found})
                if found
                else event
            )
        return event

    def _completion(self, event: CompletionEvent) -> CompletionEvent:
        update: dict = {}
        n_path = 0
        if event.context:
            update["context"] = [self._context(s) for s in event.context]
        if self.private_paths and event.filepath:
            update |= {"filepath": None, "filepath_hash": path_hash(event.filepath)}
        elif event.filepath:
            filepath, n_path = redact_path(event.filepath)  # a token can sit in a directory name
            if n_path:
                update |= {"filepath": filepath, "redacted": event.redacted + n_path}
        if self.code_free:
            update |= {
                "prefix": "",
                "suffix": "",
                "prefix_hash": self.text_hash(event.prefix),
                "suffix_hash": self.text_hash(event.suffix),
                "candidates": [self._hashed(c) for c in event.candidates],
                "code_free": True,
            }
            return event.model_copy(update=update)
        prefix, n_prefix = self.redact(event.prefix)
        suffix, n_suffix = self.redact(event.suffix)
        candidates, n_candidates = [], 0
        for candidate in event.candidates:
            text, found = self.redact(candidate.text)
            candidates.append(candidate.model_copy(update={"text": text}) if found else candidate)
            n_candidates += found
        found = n_prefix + n_suffix + n_candidates
        if found:
            update |= {
                "prefix": prefix,
                "suffix": suffix,
                "candidates": candidates,
                "redacted": event.redacted + n_path + found,
            }
        return event.model_copy(update=update) if update else event

    def _context(self, snippet: ContextSnippet) -> ContextSnippet:
        """Paths and code-free mode apply to the prompt's other files as to the completion's own."""
        update: dict = {}
        if self.private_paths and snippet.filepath:
            update |= {"filepath": None, "filepath_hash": path_hash(snippet.filepath)}
        elif snippet.filepath:
            update["filepath"] = redact_path(snippet.filepath)[0]
        if self.code_free:
            update |= {"text": "", "text_hash": self.text_hash(snippet.text)}
        else:
            update["text"] = self.redact(snippet.text)[0]
        return snippet.model_copy(update=update)

    def _hashed(self, candidate: Candidate) -> Candidate:
        return candidate.model_copy(
            update={
                "text": "",
                "text_hash": self.text_hash(candidate.text),
                "text_chars": len(candidate.text),
            }
        )
