"""What a language's own tools say about one file: does it compile, lint, format, pass its tests.

Every tool runs in the sandbox (compilers are execution too: build scripts, macros, includes);
only Python's ``compile()``, which runs nothing, stays in process. A check the sandbox could not
run answers None — no verdict — never a failure of the code.

>>> rust = RustToolchain(open_sandbox())  # doctest: +SKIP
>>> rust.check(SourceUnit("pub fn one() -> i32 { 1 }\\n", "src/lib.rs"))  # doctest: +SKIP
CheckResult(compiles=True, lint_issues=0, formatted=False, tests_pass=None)
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Protocol

from editloop.sandbox import GIB, ExecutionResult, Limits, Sandbox
from editloop.training.rewards.syntax import python_compiles

# Compilers are slower than test snippets and rustc maps far more address space than it uses.
COMPILE_LIMITS = Limits(wall_s=60.0, cpu_s=60, memory_bytes=8 * GIB, disk_bytes=512 * (1 << 20))
TEST_LIMITS = Limits(wall_s=20.0, cpu_s=20, memory_bytes=4 * GIB)


@dataclass(frozen=True)
class SourceUnit:
    """One file as it would be with a completion (or the kept text) inserted."""

    text: str
    filepath: str = ""
    tests: str | None = None  # code that exercises the file; the language decides how it runs


@dataclass(frozen=True)
class CheckResult:
    """None in a field: that check does not exist for the language, or could not run."""

    compiles: bool | None = None
    lint_issues: int | None = None
    formatted: bool | None = None
    tests_pass: bool | None = None


class Toolchain(Protocol):
    def check(self, unit: SourceUnit) -> CheckResult: ...


def verdict(result: ExecutionResult) -> bool | None:
    """Passed, failed (including hanging or flooding output), or None when the sandbox itself failed."""
    return None if result.sandbox_error is not None else result.ok


@dataclass
class RustToolchain:
    """A scratch crate per file: ``cargo clippy`` (compile errors and warnings), ``rustfmt --check``,
    and ``cargo test`` with the tests appended to the file."""

    sandbox: Sandbox
    edition: str = "2021"
    limits: Limits = field(default=COMPILE_LIMITS)

    def check(self, unit: SourceUnit) -> CheckResult:
        target, crate = self._crate(unit.text)
        clippy = self._run(["cargo", "clippy", "--offline", "--quiet", "--message-format=json"], crate)
        compiles = verdict(clippy)
        warnings = _clippy_warnings(clippy.stdout) if compiles else None
        formatted = verdict(self._run(["rustfmt", "--check", "--edition", self.edition, target], crate))
        tests = None
        if unit.tests and compiles is not False:
            _, with_tests = self._crate(f"{unit.text}\n\n{unit.tests}\n")
            tests = verdict(self._run(["cargo", "test", "--offline", "--quiet"], with_tests))
        elif unit.tests:
            tests = False
        return CheckResult(compiles, warnings, formatted, tests)

    def _crate(self, text: str) -> tuple[str, dict[str, str]]:
        # A file with a top-level main is a binary; anything else a library.
        target = "src/main.rs" if re.search(r"^fn\s+main\s*\(", text, re.MULTILINE) else "src/lib.rs"
        manifest = f'[package]\nname = "scratch"\nversion = "0.1.0"\nedition = "{self.edition}"\n'
        return target, {"Cargo.toml": manifest, target: text}

    def _run(self, command: list[str], files: dict[str, str]) -> ExecutionResult:
        return self.sandbox.run(command, files=files, toolchains=("rust",), limits=self.limits)


def _clippy_warnings(stdout: str) -> int:
    """Warnings (rustc's and clippy's lints) in cargo's JSON messages; summaries have no span."""
    count = 0
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        message = record.get("message") or {}
        if record.get("reason") == "compiler-message" and message.get("level") == "warning":
            count += bool(message.get("spans"))
    return count


@dataclass
class PythonToolchain:
    """``compile()`` in process; ``ruff check`` and ``ruff format --check`` (default rules, no config
    read) and the tests, appended to the file and run with the system Python, in the sandbox."""

    sandbox: Sandbox
    limits: Limits = field(default=COMPILE_LIMITS)
    test_limits: Limits = field(default=TEST_LIMITS)

    def check(self, unit: SourceUnit) -> CheckResult:
        name = _file_name(unit.filepath, ".py", "main.py")
        compiles = python_compiles(unit.text, name)
        lint = self._ruff(["check", "--output-format", "json"], name, unit.text)
        issues = _ruff_issues(lint.stdout) if lint.sandbox_error is None else None
        formatted = verdict(self._ruff(["format", "--check"], name, unit.text))
        tests = None
        if unit.tests:
            program = f"{unit.text}\n\n{unit.tests}\n"
            run = self.sandbox.run(
                ["python3", name], files={name: program}, toolchains=("python",), limits=self.test_limits
            )
            tests = verdict(run)
        return CheckResult(compiles, issues, formatted, tests)

    def _ruff(self, args: list[str], name: str, text: str) -> ExecutionResult:
        command = ["ruff", *args, "--isolated", "--no-cache", name]
        return self.sandbox.run(command, files={name: text}, toolchains=("ruff",), limits=self.limits)


def _ruff_issues(stdout: str) -> int | None:
    try:
        issues = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    return len(issues) if isinstance(issues, list) else None


@dataclass
class JavaToolchain:
    """``javac -Xlint:all`` (errors and lint warnings); the tests are a class with a ``main`` that
    throws on failure, compiled beside the file and run with assertions on. No formatter."""

    sandbox: Sandbox
    limits: Limits = field(default=COMPILE_LIMITS)

    def check(self, unit: SourceUnit) -> CheckResult:
        name = _java_file_name(unit.text, unit.filepath)
        compiled = self._run(["javac", "-Xlint:all", "-d", "out", name], {name: unit.text})
        compiles = verdict(compiled)
        warnings = (
            len(re.findall(r"^\S.*:\d+: warning:", compiled.stderr, re.MULTILINE)) if compiles else None
        )
        tests = None
        if unit.tests and compiles is not False:
            test_name = _java_file_name(unit.tests, "Tests.java")
            main = PurePosixPath(test_name).stem
            script = f"javac -d out {name} {test_name} && java -ea -cp out {main}"
            tests = verdict(self._run(["sh", "-c", script], {name: unit.text, test_name: unit.tests}))
        elif unit.tests:
            tests = False
        return CheckResult(compiles, warnings, None, tests)

    def _run(self, command: list[str], files: dict[str, str]) -> ExecutionResult:
        return self.sandbox.run(command, files=files, toolchains=("java",), limits=self.limits)


def _java_file_name(text: str, filepath: str) -> str:
    """javac wants a public class in a file of its name."""
    found = re.search(
        r"^\s*public\s+(?:(?:final|abstract|sealed)\s+)*(?:class|interface|enum|record)\s+(\w+)",
        text,
        re.MULTILINE,
    )
    if found:
        return f"{found.group(1)}.java"
    return _file_name(filepath, ".java", "Main.java")


def _file_name(filepath: str, extension: str, default: str) -> str:
    name = PurePosixPath(filepath.replace("\\", "/")).name if filepath else ""
    return name if name.endswith(extension) and re.fullmatch(r"[\w.-]+", name) else default


def toolchain_for(language: str, sandbox: Sandbox) -> Toolchain | None:
    """The toolchain editloop checks ``language`` with, or None for a language it has none for."""
    if language == "rust":
        return RustToolchain(sandbox)
    if language == "python":
        return PythonToolchain(sandbox)
    if language == "java":
        return JavaToolchain(sandbox)
    return None
