"""Run untrusted code — HumanEval completions, reward checks — inside bubblewrap, results as data.

Generated code is hostile until proven otherwise, and so are compilers (``#include`` of a host
file, a ``build.rs``, a proc macro). Every run gets: no network and its own pid, ipc and uts
namespaces; the system's ``/usr`` and the named toolchains bound read-only and nothing else of
the host; a size-capped tmpfs work dir holding only the files passed in; rlimits (CPU, address
space, processes, file size, open files); a wall-clock kill of the whole tree from outside; and
output capped. A run that breaks a limit comes back as an :class:`ExecutionResult`, never an
exception; a sandbox that cannot start raises :class:`SandboxUnavailableError` instead of
running anything unconfined.

>>> sandbox = open_sandbox()
>>> result = sandbox.run(["python3", "main.py"], files={"main.py": "print(6 * 7)"})
>>> result.ok, result.stdout
(True, '42\\n')
>>> sandbox.run(["cargo", "check", "--offline", "-q"], files=crate, toolchains=("rust",))  # doctest: +SKIP

Processes are counted per user for ``RLIMIT_NPROC``, and not at all for root. As root the
sandbox therefore runs its command as a fresh unprivileged uid (``setpriv``, no new privileges);
as any other user bubblewrap makes a user namespace, in which the count starts from zero.
"""

import contextlib
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from editloop.errors import SandboxError, SandboxUnavailableError

log = logging.getLogger(__name__)

WORK_DIR = "/sandbox"
# The fresh uid a root-started sandbox runs as: random in a range no real account uses, so
# concurrent sandboxes never share a process count.
UID_RANGE = (1 << 20, 1 << 30)
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
TOOLCHAINS: tuple[str, ...] = ("python", "rust", "java", "ruff")
# The JVM reserves a quarter of RAM for its heap and a GiB for class metadata up front: under an
# address-space limit it must be told to ask for less.
JAVA_OPTIONS = (
    "-Xmx512m -Xss1m -XX:CompressedClassSpaceSize=64m -XX:ReservedCodeCacheSize=64m -XX:+UseSerialGC"
)


@dataclass(frozen=True)
class Limits:
    """What one run may use. ``replace(limits, wall_s=60)`` for a slow compiler."""

    wall_s: float = 10.0  # killed from outside after this, whatever it is doing
    cpu_s: int = 10  # per process: SIGXCPU, then SIGKILL a second later
    memory_bytes: int = 2 * GIB  # address space per process
    processes: int = 128  # tasks (threads count) of the sandbox's uid
    file_bytes: int = 16 * MIB  # largest file it may write
    open_files: int = 256
    output_bytes: int = 1 * MIB  # per stream; more and the run is killed
    disk_bytes: int = 256 * MIB  # the tmpfs work dir and /tmp, each


@dataclass(frozen=True)
class ExecutionResult:
    """What happened. ``ok`` only when the program exited 0 within every limit."""

    ok: bool
    returncode: int | None  # None when the sandbox killed it or never started it
    stdout: str
    stderr: str
    timed_out: bool = False  # wall clock or CPU limit
    output_truncated: bool = False  # killed for writing more than output_bytes
    duration_s: float = 0.0
    sandbox_error: str | None = None  # the sandbox failed to set up: no verdict on the code


class Sandbox(Protocol):
    """Runs a command on given files in isolation (:class:`BwrapSandbox`, :class:`UnsafeLocalRunner`)."""

    def run(
        self,
        command: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        toolchains: Collection[str] = ("python",),
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str = ".",
    ) -> ExecutionResult:
        """Run ``command`` in a fresh work dir holding ``files`` (relative paths), its cwd ``cwd``."""
        ...


def open_sandbox(unsafe_no_sandbox: bool = False, limits: Limits | None = None) -> Sandbox:
    """The bubblewrap sandbox, or (asked for explicitly, for trusted data) no sandbox at all."""
    if unsafe_no_sandbox:
        return UnsafeLocalRunner(limits)
    return BwrapSandbox(limits=limits)


@dataclass(frozen=True)
class _Mounts:
    """Read-only host paths a toolchain needs, and what it adds to the environment."""

    binds: tuple[Path, ...] = ()
    path: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class BwrapSandbox:
    """bubblewrap with no network, read-only toolchains and a tmpfs work dir; probed when built."""

    bwrap: str = "bwrap"
    limits: Limits | None = None
    mode: Literal["root", "user"] = field(init=False)
    _mounts: dict[str, _Mounts] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.limits = self.limits or Limits()
        self.mode = "root" if os.geteuid() == 0 else "user"
        self._probe()

    def _probe(self) -> None:
        found = shutil.which(self.bwrap)
        if found is None:
            raise SandboxUnavailableError(
                f"bubblewrap ({self.bwrap}) is not installed; install it (apt-get install bubblewrap) "
                "or pass --unsafe-no-sandbox for trusted data only"
            )
        self.bwrap = found
        for tool in ("setpriv", "prlimit"):
            if shutil.which(tool, path="/usr/bin:/bin") is None:
                raise SandboxUnavailableError(f"{tool} (util-linux) is missing; install util-linux")
        result = self.run(["true"], toolchains=(), limits=Limits(wall_s=30))
        if not result.ok:
            reason = (result.sandbox_error or result.stderr or f"exit {result.returncode}").strip()
            raise SandboxUnavailableError(
                f"bubblewrap cannot start a sandbox here ({reason.splitlines()[-1] if reason else '?'}); "
                "it needs user namespaces (e.g. sysctl kernel.unprivileged_userns_clone=1 or "
                "kernel.apparmor_restrict_unprivileged_userns=0) or root. Refusing to run code unsandboxed"
            )

    def run(
        self,
        command: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        toolchains: Collection[str] = ("python",),
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str = ".",
    ) -> ExecutionResult:
        limits = limits or self.limits or Limits()
        mounts = [self._toolchain(name) for name in toolchains]
        fds: list[int] = []
        try:
            args = [
                *self._namespace_args(),
                *_system_args(),
                *_work_dir_args(limits, files or {}, fds),
                *_mount_args(mounts),
                *_env_args(mounts, env or {}),
                "--chdir",
                str(PurePosixPath(WORK_DIR) / _relative(cwd)),
            ]
            inner = [*self._drop_privileges(), *_prlimit_args(limits), "--", *command]
            return _execute([self.bwrap, *args], inner, stdin, limits, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _namespace_args(self) -> list[str]:
        common = ["--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid"]
        common += ["--unshare-net", "--unshare-uts", "--unshare-cgroup-try", "--clearenv"]
        if self.mode == "root":
            # No user namespace: the command drops to an unmapped fresh uid itself (setpriv).
            return [*common, "--cap-add", "CAP_SETUID,CAP_SETGID,CAP_SETPCAP"]
        return [*common, "--unshare-user"]

    def _drop_privileges(self) -> list[str]:
        if self.mode != "root":
            return []
        uid = str(secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0])
        return [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ]

    def _toolchain(self, name: str) -> _Mounts:
        if name not in self._mounts:
            self._mounts[name] = _find_toolchain(name)
        return self._mounts[name]


def _find_toolchain(name: str) -> _Mounts:
    """Where ``name`` lives on this host: the paths to bind and the PATH entries to add."""
    if name == "python":
        prefix = Path(sys.base_prefix).resolve()
        binds = () if _under_usr(prefix) else (prefix,)
        return _Mounts(binds, (str(prefix / "bin"),), (("PYTHONDONTWRITEBYTECODE", "1"),))
    if name == "rust":
        return _rust_toolchain()
    if name == "java":
        return _java_toolchain()
    if name == "ruff":
        ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
        if ruff is None:
            raise SandboxUnavailableError("ruff is not installed; pip install ruff")
        path = Path(ruff).resolve()
        return _Mounts((path,), (str(path.parent),), (("RUFF_CACHE_DIR", f"{WORK_DIR}/.ruff_cache"),))
    raise SandboxError(f"unknown toolchain {name!r}; choose from {', '.join(TOOLCHAINS)}")


def _rust_toolchain() -> _Mounts:
    """The active rustup toolchain's own binaries (not rustup's proxies, which want ~/.rustup)."""
    cargo_bin = Path.home() / ".cargo" / "bin"
    rustc = shutil.which("rustc") or shutil.which("rustc", path=str(cargo_bin))
    if rustc is None:
        raise SandboxUnavailableError("rustc is not installed; install Rust (rustup) with cargo and clippy")
    found = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=False)
    sysroot = Path(found.stdout.strip())
    if found.returncode != 0 or not (sysroot / "bin" / "cargo").is_file():
        raise SandboxUnavailableError(f"no cargo beside rustc in {sysroot or rustc}; install the toolchain")
    env = (("CARGO_HOME", f"{WORK_DIR}/.cargo"), ("CARGO_NET_OFFLINE", "true"), ("CARGO_INCREMENTAL", "0"))
    return _Mounts((sysroot,), (str(sysroot / "bin"),), env)


def _java_toolchain() -> _Mounts:
    javac = shutil.which("javac")
    if javac is None:
        raise SandboxUnavailableError("javac is not installed; install a JDK (apt-get install default-jdk)")
    home = Path(javac).resolve().parent.parent
    # Debian's JDK keeps its configuration in /etc/java-N-openjdk behind symlinks.
    targets = {
        Path(*link.resolve().parts[:3])
        for link in (home / "conf").rglob("*")
        if link.is_symlink() and link.resolve().exists()
    }
    binds = tuple(p for p in (home, *sorted(targets)) if not _under_usr(p))
    env = (("JAVA_HOME", str(home)), ("JAVA_TOOL_OPTIONS", JAVA_OPTIONS))
    return _Mounts(binds, (str(home / "bin"),), env)


def _under_usr(path: Path) -> bool:
    return path.is_relative_to("/usr")


def _system_args() -> list[str]:
    """/usr read-only (as /bin, /lib… where the host merges them), fresh /proc, /dev and /tmp."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    args += ["--perms", "0755", "--dir", "/etc"]
    for shared in ("/etc/ld.so.cache", "/etc/alternatives"):
        if Path(shared).exists():
            args += ["--ro-bind", shared, shared]
    return [*args, "--proc", "/proc", "--dev", "/dev"]


def _work_dir_args(limits: Limits, files: Mapping[str, str | bytes], fds: list[int]) -> list[str]:
    """A tmpfs work dir (and /tmp) anyone in the sandbox may write, holding copies of ``files``."""
    args = ["--perms", "01777", "--size", str(limits.disk_bytes), "--tmpfs", "/tmp"]
    args += ["--perms", "01777", "--size", str(limits.disk_bytes), "--tmpfs", WORK_DIR]
    made: set[PurePosixPath] = set()
    for name, content in files.items():
        rel = _relative(name)
        for parent in reversed(rel.parents[:-1]):
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0777", "--dir", f"{WORK_DIR}/{parent}"]
        fd = os.memfd_create("sandbox-file")
        fds.append(fd)
        os.write(fd, content.encode() if isinstance(content, str) else content)
        os.lseek(fd, 0, os.SEEK_SET)
        args += ["--perms", "0666", "--file", str(fd), f"{WORK_DIR}/{rel}"]
    return args


def _relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise SandboxError(f"sandbox file {name!r} must be a relative path inside the work dir")
    return path


def _mount_args(mounts: list[_Mounts]) -> list[str]:
    """Toolchains at their host paths (libpython, sysroots are found by absolute path)."""
    args: list[str] = []
    made: set[Path] = set()
    for path in sorted({p for m in mounts for p in m.binds}):
        # bubblewrap makes missing parents 0700; the unprivileged uid must pass through them.
        for parent in reversed(path.parents[:-1]):
            if parent not in made and not _under_usr(parent):
                made.add(parent)
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(path), str(path)]
    return args


def _env_args(mounts: list[_Mounts], extra: Mapping[str, str]) -> list[str]:
    path = [p for m in mounts for p in m.path] + ["/usr/local/bin", "/usr/bin", "/bin"]
    env = {"PATH": ":".join(dict.fromkeys(path)), "HOME": WORK_DIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    for mount in mounts:
        env.update(mount.env)
    env.update(extra)
    return [arg for key, value in env.items() for arg in ("--setenv", key, value)]


def _prlimit_args(limits: Limits) -> list[str]:
    """Set inside the sandbox: a user namespace counts processes from zero only after it exists."""
    return [
        "prlimit",
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_bytes}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_bytes}",
        f"--nofile={limits.open_files}",
        "--core=0",
    ]


@dataclass
class _Output:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    timed_out: bool = False
    truncated: bool = False


def _execute(
    outer: list[str], inner: list[str], stdin: str | bytes | None, limits: Limits, fds: list[int]
) -> ExecutionResult:
    status_read, status_write = os.pipe()
    stdin_fd = _stdin_fd(stdin)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*outer, "--json-status-fd", str(status_write), "--", *inner],
            stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(*fds, status_write),
            start_new_session=True,  # one process group to kill: bwrap, whose death ends the sandbox
            cwd="/",
        )
    except OSError as exc:
        os.close(status_read)
        raise SandboxUnavailableError(f"cannot start bubblewrap ({outer[0]}): {exc}") from exc
    finally:
        os.close(status_write)
        if stdin_fd is not None:
            os.close(stdin_fd)
    try:
        output = _collect(proc, limits, started + limits.wall_s)
    finally:
        _kill(proc)
        with os.fdopen(status_read, "rb") as status:
            child_exit = _child_exit(status.read())
    return _result(proc.returncode, child_exit, output, time.monotonic() - started)


def _stdin_fd(stdin: str | bytes | None) -> int | None:
    """Input from a memfd: a program that never reads it cannot block the writer."""
    if stdin is None:
        return None
    fd = os.memfd_create("sandbox-stdin")
    os.write(fd, stdin.encode() if isinstance(stdin, str) else stdin)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _collect(proc: subprocess.Popen, limits: Limits, deadline: float) -> _Output:
    """Read both streams until they close, the deadline passes or one overflows its cap."""
    output = _Output()
    assert proc.stdout is not None and proc.stderr is not None, "started with stdout and stderr pipes"
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, output.stdout)
        selector.register(proc.stderr, selectors.EVENT_READ, output.stderr)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                output.timed_out = True
                break
            for key, _ in selector.select(timeout=remaining):
                chunk = os.read(key.fd, 64 * KIB)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer: bytearray = key.data
                buffer += chunk[: max(0, limits.output_bytes - len(buffer))]
                if len(chunk) > 0 and len(buffer) >= limits.output_bytes:
                    output.truncated = True
            if output.truncated:
                break
    if not output.timed_out and not output.truncated:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            output.timed_out = True
    return output


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL bubblewrap's group; --die-with-parent then takes the sandbox's pid 1 and all below it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _child_exit(status: bytes) -> int | None:
    """The command's exit code from bubblewrap's status stream; None when it never started."""
    for line in status.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "exit-code" in record:
            return int(record["exit-code"])
    return None


def _result(
    bwrap_code: int | None, child_exit: int | None, output: _Output, duration: float
) -> ExecutionResult:
    stdout = output.stdout.decode(errors="replace")
    stderr = output.stderr.decode(errors="replace")
    killed = output.timed_out or output.truncated
    setup_failed = child_exit is None and not killed
    returncode = None if killed or setup_failed else child_exit
    return ExecutionResult(
        ok=returncode == 0,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=output.timed_out or returncode == 128 + signal.SIGXCPU,
        output_truncated=output.truncated,
        duration_s=round(duration, 3),
        sandbox_error=(stderr.strip() or f"bwrap exited {bwrap_code}") if setup_failed else None,
    )


@dataclass
class UnsafeLocalRunner:
    """No isolation, only rlimits and the wall clock: for trusted data where bubblewrap cannot run."""

    limits: Limits | None = None

    def __post_init__(self) -> None:
        log.warning("running code WITHOUT a sandbox (unsafe_no_sandbox): only for trusted data")

    def run(
        self,
        command: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        toolchains: Collection[str] = ("python",),
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str = ".",
    ) -> ExecutionResult:
        limits = limits or self.limits or Limits()
        mounts = [_find_toolchain(name) for name in toolchains]
        with tempfile.TemporaryDirectory(prefix="editloop-unsafe-") as work:
            for name, content in (files or {}).items():
                target = Path(work) / _relative(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode() if isinstance(content, str) else content)
            environ = dict(os.environ) | {k: v for m in mounts for k, v in m.env} | dict(env or {})
            environ["PATH"] = ":".join([*(p for m in mounts for p in m.path), os.environ.get("PATH", "")])
            environ = {k: v.replace(WORK_DIR, work) for k, v in environ.items()}
            inner = [*_prlimit_args(replace(limits, processes=max(limits.processes, 4096))), "--", *command]
            return _execute_local(inner, stdin, limits, environ, str(Path(work) / _relative(cwd)))


def _execute_local(
    command: list[str], stdin: str | bytes | None, limits: Limits, env: dict[str, str], cwd: str
) -> ExecutionResult:
    stdin_fd = _stdin_fd(stdin)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=cwd,
            env=env,
        )
    finally:
        if stdin_fd is not None:
            os.close(stdin_fd)
    try:
        output = _collect(proc, limits, started + limits.wall_s)
    finally:
        _kill(proc)
    code = proc.returncode
    return _result(code, 128 - code if code < 0 else code, output, time.monotonic() - started)
