"""The replay harness: the acceptance rule, triggers, splits, commits, determinism."""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from editloop.errors import BadRequestError
from editloop.eval.replay import (
    ReplayConfig,
    Suggestion,
    accepted_length,
    exact_match,
    replay,
)
from editloop.eval.replay_cli import load_tasks
from editloop.eval.replay_tasks import Hunk, TypingTask, commit_tasks, file_tasks, split_of


@pytest.mark.parametrize(
    ("suggestion", "truth", "partial", "expected"),
    [
        ("return a + b", "return a + b\n", True, 12),  # a prefix: all of it (a full accept)
        ("return a - b", "return a + b\n", True, 9),  # the whole tokens before the first mismatch
        ("return a - b", "return a + b\n", False, 0),  # no partial accept: nothing
        ("self.foo(x)", "self.fob(y)\n", True, 5),  # "self.", not "self.fo": no half identifiers
        ("x = compute(a)", "x = compute(b)", True, 12),  # up to the bracket
        ("foo_bar", "foo_baz", True, 0),  # a single wrong identifier: nothing to take
        ("r", "return x", True, 1),  # a prefix, however short, is a full accept
        ("x = 1", "y = 1\n", True, 0),  # wrong from the first character
        ("   foo", "   bar", True, 0),  # blanks alone are not worth taking
        ("a\nb", "a\nb\nc", True, 3),  # multi-line prefix
    ],
)
def test_acceptance_rule(suggestion: str, truth: str, partial: bool, expected: int) -> None:
    assert accepted_length(suggestion, truth, partial) == expected


def test_exact_match_spans_the_suggestion_lines() -> None:
    assert exact_match("return x", "return x\nfoo")
    assert exact_match("if a:\n    b", "if a:\n    b\nc")
    assert not exact_match("return", "return x\n")  # a prefix is not an exact match
    assert not exact_match("return x\n    y", "return x\nfoo")


def test_split_is_by_path_and_disjoint(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n")
    train = {t.path for t in file_tasks(tmp_path, None, "train", 0.7)}
    heldout = {t.path for t in file_tasks(tmp_path, None, "heldout", 0.7)}
    assert train and heldout and not train & heldout
    assert train | heldout == {f"m{i}.py" for i in range(40)}
    assert all(split_of(p, 0.7) == "train" for p in train)
    assert {t.path for t in file_tasks(tmp_path, "m1*.py", "all", 0.7)} == {
        "m1.py",
        *{f"m1{i}.py" for i in range(10)},
    }


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_commit_tasks_type_the_added_lines_in_place(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    first = "def a():\n    return 1\n\n\ndef c():\n    return 3\n"
    (tmp_path / "m.py").write_text(first)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    second = "import os\n\ndef a():\n    return 2\n\n\ndef b():\n    return 2\n\n\ndef c():\n    return 3\n"
    (tmp_path / "m.py").write_text(second)
    _git(tmp_path, "commit", "-qam", "two")
    (task,) = commit_tasks(tmp_path, "HEAD~1..HEAD", None, "all", 0.7)
    assert task.before == first
    doc = task.before
    for hunk in task.hunks:
        doc = doc[: hunk.offset] + hunk.added + doc[hunk.offset + hunk.removed :]
    assert doc == second
    with pytest.raises(BadRequestError):
        commit_tasks(tmp_path / "m.py", "HEAD", None, "all", 0.7)


@dataclass
class OracleEditor:
    """Suggests the true next line (or abstains at blank lines): isolates the simulator's bookkeeping."""

    truth: str = ""
    doc: str = ""
    cursor: int = 0
    log: list[tuple] = field(default_factory=list)
    wrong_every: int = 0
    asked: int = 0

    def open(self, task: TypingTask) -> None:
        self.truth = "".join(h.added for h in task.hunks)
        self.doc, self.cursor = task.before, 0

    def replace(self, offset: int, removed: int, text: str) -> None:
        self.doc = self.doc[:offset] + text + self.doc[offset + removed :]
        self.cursor = offset + len(text)

    def type(self, text: str) -> None:
        self.log.append(("type", text))
        self.replace(self.cursor, 0, text)

    def suggest(self) -> Suggestion | None:
        self.asked += 1
        rest = self.truth[self.cursor :].split("\n")[0]
        if self.wrong_every and self.asked % self.wrong_every == 0:
            rest = "zzz" + rest
        self.log.append(("suggest", self.cursor, rest))
        return Suggestion(f"c{self.asked}", rest, 1.0, "v1")

    def accept(self, suggestion: Suggestion, length: int) -> None:
        self.log.append(("accept", length))
        self.replace(self.cursor, 0, suggestion.text[:length])

    def advance(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        assert self.doc == self.truth  # the developer always ends with the true text


CODE = "def add(a, b):\n    total = a + b\n    return total\n\n\nclass Point:\n    x: int = 0\n"


def test_a_perfect_model_saves_every_char_after_each_trigger() -> None:
    task = TypingTask("m.py", "python", "", [Hunk(0, 0, CODE)])
    editor = OracleEditor()
    stats = replay([task], editor, ReplayConfig(seed=0)).summary()
    assert stats["acceptance_rate"] == stats["full_accept_rate"] == stats["any_accept_rate"] == 1.0
    assert stats["shown"] == stats["full_accepts"] == stats["exact_match"] * stats["shown"]
    assert stats["partial_accepts"] == 0 and stats["chars_retained"] == stats["chars_inserted"]
    # Only indentation and newlines are typed: the oracle supplies every line's code.
    assert stats["chars_typed"] == sum(c in " \n" for c in CODE) - CODE.count(" ") + sum(
        len(line) - len(line.lstrip()) for line in CODE.split("\n")
    )
    assert stats["chars_typed"] + stats["chars_inserted"] == len(CODE)


def test_wrong_suggestions_are_typed_over_and_same_seed_same_actions() -> None:
    task = TypingTask("m.py", "python", "", [Hunk(0, 0, CODE * 3)])
    runs = []
    for _ in range(2):
        editor = OracleEditor(wrong_every=2)
        stats = replay([task], editor, ReplayConfig(seed=7, pause_after_word=0.5)).summary()
        runs.append((editor.log, stats["shown"], stats["full_accepts"]))
    assert runs[0] == runs[1]
    assert 0 < runs[0][2] < runs[0][1]
    other = OracleEditor(wrong_every=2)
    replay([task], other, ReplayConfig(seed=8, pause_after_word=0.5))
    assert other.log != runs[0][0]  # the seed moves the developer's pauses


def test_load_tasks_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadRequestError, match="does not exist"):
        load_tasks(tmp_path / "nope", None, None, "all", 0.7)
    with pytest.raises(BadRequestError, match="ratio"):
        load_tasks(tmp_path, None, None, "all", 1.5)
    with pytest.raises(BadRequestError, match="nothing to replay"):
        load_tasks(tmp_path, None, None, "all", 0.7)


def test_full_partial_and_old_any_accepts_are_counted_apart() -> None:
    task = TypingTask("m.py", "python", "", [Hunk(0, 0, "value = compute(a, b)\nvalue = compute(c)\n")])

    @dataclass
    class Fixed(OracleEditor):
        answers: tuple = ()

        def suggest(self) -> Suggestion | None:
            self.asked += 1
            return Suggestion(f"c{self.asked}", self.answers[self.asked - 1], 1.0, "v1")

    # line 1: a whole-token partial ("value = compute("); line 2: only "v" matches before "alue"
    # diverges mid-identifier, which the old rule counted and the new one does not.
    editor = Fixed(answers=("value = compute(x)", "vzz = 1"))
    stats = replay([task], editor, ReplayConfig(seed=0, pause_after_word=0.0)).summary()
    assert (stats["shown"], stats["full_accepts"], stats["partial_accepts"]) == (2, 0, 1)
    assert (stats["full_accept_rate"], stats["partial_accept_rate"], stats["any_accept_rate"]) == (
        0,
        0.5,
        1.0,
    )
    assert stats["chars_inserted"] == len("value = compute(")


def test_chars_retained_follow_later_edits(tmp_path: Path) -> None:
    # The developer takes a line, and a later hunk of the same commit deletes part of it.
    line = "total = price * count\n"
    task = TypingTask("m.py", "python", "", [Hunk(0, 0, line), Hunk(8, 8, "")])

    class Editing(OracleEditor):
        def close(self) -> None:
            assert self.doc == "total = count\n"

    stats = replay([task], Editing(), ReplayConfig(seed=0, pause_after_word=0.0)).summary()
    assert stats["chars_inserted"] == len(line.strip())
    assert 0 < stats["chars_retained"] < stats["chars_inserted"]
    assert stats["retained_rate"] < 1.0
