"""Hostile programs in the real bubblewrap sandbox: each contained, nothing left running or leaked.

As root every test runs twice: in-process (root mode: bubblewrap privileged, the command as a
fresh uid) and from an unprivileged process (user mode: bubblewrap in a user namespace, as it
runs for a non-root user in CI).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from editloop.errors import SandboxError, SandboxUnavailableError
from editloop.sandbox import BwrapSandbox, ExecutionResult, Limits, open_sandbox

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
# The unprivileged run uses the system python (the venv's may sit under a 0700 home).
SYSTEM_PYTHON = "/usr/bin/python3"
MODES = ["root", "user"] if os.geteuid() == 0 else ["user"]


class UnprivilegedSandbox:
    """The sandbox as a non-root user sees it: a child process as ``nobody`` runs it."""

    def run(self, command, *, files=None, stdin=None, toolchains=("python",), limits=None, **_):
        request = {
            "command": list(command),
            "files": files or {},
            "stdin": stdin,
            "toolchains": list(toolchains),
            "limits": asdict(limits or Limits()),
        }
        driver = (
            "import json, sys; sys.path.insert(0, sys.argv[1]);"
            "from editloop.sandbox import Limits, open_sandbox;"
            "r = json.loads(sys.stdin.read()); s = open_sandbox();"
            "assert s.mode == 'user', s.mode;"
            "res = s.run(r['command'], files=r['files'], stdin=r['stdin'], toolchains=r['toolchains'],"
            " limits=Limits(**r['limits']));"
            "print(json.dumps(res.__dict__))"
        )
        unprivileged = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        done = subprocess.run(
            [*unprivileged, SYSTEM_PYTHON, "-c", driver, str(REPO)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return ExecutionResult(**json.loads(done.stdout))


@pytest.fixture(params=MODES)
def sandbox(request: pytest.FixtureRequest):
    if request.param == "root":
        return open_sandbox()
    if os.geteuid() == 0:
        if not (Path(SYSTEM_PYTHON).exists() and shutil.which("setpriv")):
            pytest.skip("needs /usr/bin/python3 and setpriv to run unprivileged")
        return UnprivilegedSandbox()
    return open_sandbox()


def alive(marker: str) -> list[int]:
    """Pids of processes (anywhere on the host) whose command line carries ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def assert_none_alive(marker: str) -> None:
    deadline = time.monotonic() + 3
    while alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(marker) == []


def python(code: str, marker: str) -> list[str]:
    return ["python3", "-c", code, marker]


def test_well_behaved_program_runs(sandbox) -> None:
    result = sandbox.run(
        ["python3", "main.py"],
        files={"main.py": "print(open('pkg/data.txt').read() * 2)", "pkg/data.txt": "ab"},
    )
    assert result.ok and result.stdout == "abab\n" and result.returncode == 0


def test_fork_bomb_is_contained(sandbox) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    result = sandbox.run(python(code, marker), limits=Limits(wall_s=3, processes=32))
    assert result.timed_out and not result.ok and result.returncode is None
    assert time.monotonic() - started < 15
    assert_none_alive(marker)


def test_setsid_daemon_does_not_survive(sandbox) -> None:
    marker = f"daemon-{uuid.uuid4().hex}"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    result = sandbox.run(python(code, marker))
    assert result.ok and result.stdout == "parent done\n"
    assert_none_alive(marker)


def test_no_network_to_the_outside_or_the_host(sandbox) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    connected, finished = threading.Event(), threading.Event()

    def accept() -> None:
        while not finished.is_set():
            try:
                listener.accept()[0].close()
                connected.set()
            except TimeoutError:
                continue

    watcher = threading.Thread(target=accept)
    watcher.start()
    code = (
        "import socket, sys\n"
        f"for address in [('1.1.1.1', 80), ('8.8.8.8', 53), ('127.0.0.1', {port})]:\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    try:\n"
        "        s.connect(address); print('CONNECTED', address)\n"
        "    except OSError as exc:\n"
        "        print('refused', address, exc.errno)\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443); print('RESOLVED')\n"
        "except OSError:\n"
        "    print('no dns')\n"
    )
    result = sandbox.run(["python3", "-c", code])
    finished.set()
    watcher.join()
    listener.close()
    assert result.ok, result.stderr
    assert "CONNECTED" not in result.stdout and "RESOLVED" not in result.stdout
    assert result.stdout.count("refused") == 3
    assert not connected.is_set()


def test_writes_outside_the_work_dir_change_nothing_on_the_host(sandbox, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    victim = tmp_path / "victim.txt"
    targets = [str(victim), "/usr/evil.txt", f"{sys.base_prefix}/evil.txt", "/etc/evil", "/evil"]
    code = (
        "import json, sys\n"
        "for path in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        open(path, 'w').write('pwned'); print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('denied', path, type(exc).__name__)\n"
        "open('/sandbox/ok.txt', 'w').write('fine'); print('work dir ok')\n"
    )
    result = sandbox.run(["python3", "-c", code, json.dumps(targets)])
    assert result.ok, result.stderr
    assert "work dir ok" in result.stdout
    for target in targets:
        assert not Path(target).exists(), target
    assert "WROTE " + str(victim) not in result.stdout
    assert not (Path("/usr") / "evil.txt").exists()


def test_disk_and_file_size_are_capped(sandbox) -> None:
    code = (
        "try:\n"
        "    with open('big', 'wb') as f:\n"
        "        for _ in range(64):\n"
        "            f.write(b'x' * (1 << 20))\n"
        "except OSError as exc:\n"
        "    print('stopped', exc.errno)\n"
    )
    # Python ignores SIGXFSZ, so the file-size limit surfaces as EFBIG (27), a full tmpfs as ENOSPC (28).
    big_file = sandbox.run(["python3", "-c", code], limits=Limits(file_bytes=8 << 20))
    assert big_file.ok and big_file.stdout == "stopped 27\n"
    full_disk = sandbox.run(["python3", "-c", code], limits=Limits(file_bytes=128 << 20, disk_bytes=16 << 20))
    assert full_disk.ok and full_disk.stdout == "stopped 28\n"


def test_ten_gigabyte_allocation_fails_fast(sandbox) -> None:
    result = sandbox.run(["python3", "-c", "x = bytearray(10 * 2**30); print('ALLOCATED')"])
    assert not result.ok and "MemoryError" in result.stderr and "ALLOCATED" not in result.stdout
    assert result.duration_s < 5


def test_infinite_output_is_capped_and_killed(sandbox) -> None:
    marker = f"spew-{uuid.uuid4().hex}"
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    result = sandbox.run(python(code, marker), limits=Limits(output_bytes=256 * 1024, wall_s=20))
    assert result.output_truncated and not result.ok and not result.timed_out
    assert len(result.stdout) == 256 * 1024
    assert result.duration_s < 10
    assert_none_alive(marker)


def test_stdin_reads_end_of_file_or_the_given_input(sandbox) -> None:
    result = sandbox.run(["python3", "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert result.ok and result.stdout == "''\n" and result.duration_s < 5
    given = sandbox.run(["python3", "-c", "print(input()[::-1])"], stdin="olleh\n")
    assert given.ok and given.stdout == "hello\n"


def test_cpu_limit_stops_a_busy_loop(sandbox) -> None:
    result = sandbox.run(["python3", "-c", "while True: pass"], limits=Limits(cpu_s=1, wall_s=10))
    assert result.timed_out and not result.ok and result.duration_s < 5


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file the sandboxed compilers must not read, outside the sandbox."""
    path = tmp_path / "secret.txt"
    path.write_text(f"TOPSECRET-{uuid.uuid4().hex}\n")
    return path


def assert_not_leaked(result: ExecutionResult, secret: Path) -> None:
    token = secret.read_text().strip()
    assert token not in result.stdout and token not in result.stderr
    assert "root:x:0:0" not in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_include_of_host_files_fails(secret: Path) -> None:
    sandbox = open_sandbox()
    hello = sandbox.run(
        ["sh", "-c", "cc -o hello hello.c && ./hello"],
        files={"hello.c": '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'},
        toolchains=(),
    )
    assert hello.ok and hello.stdout == "hi\n", hello.stderr  # the compiler works in here
    for header in (str(secret), "/etc/passwd", "/etc/shadow"):
        source = f'const char *s =\n#include "{header}"\n;\nint main(void) {{ return 0; }}\n'
        result = sandbox.run(["cc", "-E", "x.c"], files={"x.c": source}, toolchains=())
        assert not result.ok and "No such file" in result.stderr
        assert_not_leaked(result, secret)
    endless = sandbox.run(
        ["cc", "-c", "x.c"],
        files={"x.c": '#include "/dev/zero"\n'},
        toolchains=(),
        limits=Limits(wall_s=10, cpu_s=5, memory_bytes=512 << 20),
    )
    assert not endless.ok and ("out of memory" in endless.stderr or endless.timed_out)


RUST_LIMITS = Limits(wall_s=60, cpu_s=60, memory_bytes=4 << 30)
CARGO_TOML = '[package]\nname = "demo"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n'


@pytest.mark.skipif(
    shutil.which("rustc") is None and not (Path.home() / ".cargo/bin/rustc").exists(), reason="no Rust"
)
def test_rust_build_script_and_include_str_cannot_read_host_files(secret: Path) -> None:
    sandbox = open_sandbox()
    good = {"Cargo.toml": CARGO_TOML, "src/lib.rs": "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"}
    for command in (
        ["cargo", "check", "--offline"],
        ["cargo", "clippy", "--offline", "--", "-D", "warnings"],
    ):
        result = sandbox.run(command, files=good, toolchains=("rust",), limits=RUST_LIMITS)
        assert result.ok, result.stderr  # cargo works in here
    include = {**good, "src/lib.rs": f'pub const S: &str = include_str!("{secret}");\n'}
    result = sandbox.run(
        ["cargo", "build", "--offline"], files=include, toolchains=("rust",), limits=RUST_LIMITS
    )
    assert not result.ok and "couldn't read" in result.stderr
    assert_not_leaked(result, secret)
    build_rs = (
        "fn main() {\n"
        f'    let s = std::fs::read_to_string("{secret}").unwrap_or_else(|e| format!("unreadable: {{e}}"));\n'
        '    let p = std::fs::read_to_string("/etc/passwd").unwrap_or_default();\n'
        '    println!("cargo:warning=LEAK {s} {p}");\n'
        '    std::fs::write("/usr/pwned", "x").unwrap_or_default();\n'
        "}\n"
    )
    script = {**good, "build.rs": build_rs}
    result = sandbox.run(
        ["cargo", "build", "--offline"], files=script, toolchains=("rust",), limits=RUST_LIMITS
    )
    assert result.ok and "unreadable" in result.stderr  # the script ran, the file was not there
    assert_not_leaked(result, secret)
    assert not Path("/usr/pwned").exists()


def test_formatters_and_compilers_the_rewards_use() -> None:
    sandbox = open_sandbox()
    lint = sandbox.run(
        ["ruff", "check", "--no-cache", "a.py"], files={"a.py": "import os\n"}, toolchains=("ruff",)
    )
    assert not lint.ok and "F401" in lint.stdout
    clean = sandbox.run(
        ["ruff", "format", "--check", "a.py"], files={"a.py": "x = 1\n"}, toolchains=("ruff",)
    )
    assert clean.ok, clean.stdout + clean.stderr
    if shutil.which("javac"):
        java = sandbox.run(
            ["sh", "-c", "javac Main.java && java Main"],
            files={
                "Main.java": "class Main { public static void main(String[] a) { System.out.println(42); } }"
            },
            toolchains=("java",),
            limits=Limits(wall_s=60, cpu_s=60),
        )
        assert java.ok and java.stdout == "42\n", java.stderr


def test_bad_requests_raise() -> None:
    sandbox = open_sandbox()
    with pytest.raises(SandboxError, match="relative"):
        sandbox.run(["true"], files={"../escape": "x"})
    with pytest.raises(SandboxError, match="relative"):
        sandbox.run(["true"], files={"/etc/x": "x"})
    with pytest.raises(SandboxError, match="unknown toolchain"):
        sandbox.run(["true"], toolchains=("cobol",))


def test_missing_bubblewrap_refuses() -> None:
    with pytest.raises(SandboxUnavailableError, match="not installed"):
        BwrapSandbox(bwrap="/nonexistent/bwrap")


def test_refuses_where_user_namespaces_are_disabled() -> None:
    """Inside a bubblewrap that forbids further user namespaces, an unprivileged probe must refuse."""
    if os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("builds the userns-less environment as root with the system python")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from editloop.errors import SandboxUnavailableError\n"
        "from editloop.sandbox import open_sandbox\n"
        "try:\n"
        "    open_sandbox()\n"
        "    print('RAN')\n"
        "except SandboxUnavailableError as exc:\n"
        "    print('REFUSED', exc.message)\n"
    )
    command = ["bwrap", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns"]
    command += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    command += ["--ro-bind", str(REPO), str(REPO)]  # a checkout under /tmp (CI) must stay visible
    command += ["--", SYSTEM_PYTHON, "-c", probe, str(REPO)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("REFUSED") and "user namespaces" in done.stdout


def test_unsafe_runner_is_explicit_logged_and_still_limited(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="editloop.sandbox"):
        runner = open_sandbox(unsafe_no_sandbox=True)
    assert "WITHOUT a sandbox" in caplog.text
    done = runner.run(["python3", "main.py"], files={"main.py": "import os; print(os.getcwd() != '/')"})
    assert done.ok and done.stdout == "True\n"
    slow = runner.run(["python3", "-c", "import time; time.sleep(30)"], limits=Limits(wall_s=1))
    assert slow.timed_out and slow.returncode is None
