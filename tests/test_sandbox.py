"""The sandbox contains hostile programs: loops, memory and fork bombs, writes, secrets, network.

Each hostile program is bounded by itself too (a fork loop of at most 300 attempts, children
that only sleep), so even a broken sandbox cannot take the shared test machine down.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import lmlab
from lmlab.errors import LmlabError
from lmlab.eval import sandbox_child
from lmlab.eval.sandbox import SandboxConfig, processes_of_uid, run_in_sandbox
from sandbox_fixtures import needs_sandbox

pytestmark = pytest.mark.filterwarnings("ignore:lmlab will execute model-written code")


def cfg(**kw) -> SandboxConfig:
    kw.setdefault("timeout_s", 10.0)
    if all(kw.get(layer, True) for layer in ("use_namespaces", "use_landlock", "use_seccomp")):
        needs_sandbox()
    return SandboxConfig(allow_code_execution=True, **kw)


def test_refuses_without_opt_in():
    with pytest.raises(LmlabError, match="--allow-code-execution"):
        run_in_sandbox("print('hi')", SandboxConfig())


def test_opt_in_warns_once_and_runs(recwarn):
    import lmlab.eval.sandbox as sb

    c = cfg()
    sb._warned = False
    r = run_in_sandbox("print(6 * 7)", c)
    assert r.passed and r.reason == "passed" and r.exit_code == 0
    assert r.stdout_tail.strip() == "42"
    assert any("model-written code" in str(w.message) for w in recwarn.list)


def test_failure_is_reported_with_last_error_line():
    r = run_in_sandbox("def f():\n    return 1\nassert f() == 2, 'wrong answer'", cfg())
    assert not r.passed and not r.timed_out
    assert r.exit_code == 1
    assert r.reason == "error: AssertionError: wrong answer"
    assert "Traceback" in r.stderr_tail


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    r = run_in_sandbox("while True:\n    pass", cfg(timeout_s=1.0))
    assert r.timed_out and not r.passed and r.reason == "timeout"
    assert time.monotonic() - t0 < 5.0


def test_memory_bomb_fails_and_parent_is_fine():
    bomb = "chunks = []\nwhile True:\n    chunks.append(b'x' * 10_000_000)"
    r = run_in_sandbox(bomb, cfg(memory_mb=256))
    assert not r.passed and r.reason == "memory limit", r
    # The parent can still allocate and run normally.
    assert len(bytearray(50_000_000)) == 50_000_000
    assert run_in_sandbox("print('still fine')", cfg()).passed


def _fork_bomb(tail: str = "", marker: str = "") -> str:
    # At most 300 attempts; half the children try to escape the process group with setsid().
    # Each child then becomes a sleeping interpreter whose command line carries ``marker``, so
    # the test finds it from outside the sandbox's PID namespace (whose pids it cannot see).
    return (
        textwrap.dedent(
            f"""
        import os, sys, time
        ok = fail = 0
        for i in range(300):
            try:
                pid = os.fork()
            except OSError:
                fail += 1
                continue
            if pid == 0:
                if i % 2:
                    os.setsid()
                print("child", i, flush=True)
                try:
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
                finally:
                    time.sleep(60)
                    os._exit(0)
            ok += 1
        print("forked", ok, "failed", fail, flush=True)
        """
        )
        + tail
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except OSError:
        return False


def _marked_processes(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read().split(b"\0"):
                        found.append(int(pid))
            except OSError:
                pass
    return [p for p in found if _alive(p)]


@pytest.mark.parametrize("namespaces", [True, False])
@pytest.mark.parametrize("tail,timeout", [("time.sleep(0.5)\n", 10.0), ("time.sleep(60)\n", 2.0)])
def test_fork_bomb_is_contained_and_cleaned_up(tail, timeout, namespaces):
    if not namespaces and os.geteuid() != 0:
        pytest.skip("without namespaces only the root/uid mode can find setsid() escapees")
    c = cfg(max_processes=16, timeout_s=timeout, use_namespaces=namespaces)
    marker = f"lmlab-fork-bomb-{os.getpid()}-{time.monotonic_ns()}"
    with ThreadPoolExecutor(1) as ex:
        running = ex.submit(run_in_sandbox, _fork_bomb(tail, marker), c)
        seen = 0
        while not running.done():  # the children are visible from here while they run
            seen = max(seen, len(_marked_processes(marker)))
            time.sleep(0.05)
        r = running.result()
    assert seen > 0, r
    lines = r.stdout_tail.splitlines()
    children = [int(ln.split()[1]) for ln in lines if ln.startswith("child")]
    summary = [ln for ln in lines if ln.startswith("forked")]
    assert summary, r
    forked, failed = int(summary[0].split()[1]), int(summary[0].split()[3])
    assert forked < 16 and failed >= 300 - 16  # the process limit stopped it
    assert 0 < len(children) <= forked  # a child killed before it printed is not listed
    assert r.timed_out == (timeout < 5)
    time.sleep(0.2)
    assert _marked_processes(marker) == []  # every child was killed afterwards
    if r.uid is not None:
        assert processes_of_uid(r.uid) == []


def test_write_outside_its_folder_is_blocked(tmp_path):
    private = tmp_path / "private"  # owned by the test, not world-writable
    shared = tmp_path / "shared"  # world-writable like /tmp
    private.mkdir()
    shared.mkdir()
    os.chmod(shared, 0o1777)
    prog = textwrap.dedent(
        f"""
        import os
        with open("inside.txt", "w") as f:  # its own folder works
            f.write("ok")
        results = []
        for target in [{str(private / "evil.txt")!r}, {str(shared / "evil.txt")!r}]:
            try:
                with open(target, "w") as f:
                    f.write("pwned")
                results.append("wrote")
            except OSError as e:
                results.append(type(e).__name__)
        print(os.getcwd())
        print(*results)
        """
    )
    r = run_in_sandbox(prog, cfg())
    assert r.passed, r
    cwd, results = r.stdout_tail.splitlines()
    assert not (private / "evil.txt").exists()
    assert results.split()[0] == "PermissionError"
    assert not os.path.exists(cwd)  # its own folder is deleted afterwards
    if "landlock-fs" not in r.isolation:
        pytest.skip(f"no Landlock here ({r.isolation}): world-writable folders stay writable")
    assert not (shared / "evil.txt").exists()
    assert results.split()[1] == "PermissionError"


def test_environment_secret_is_not_visible(monkeypatch):
    monkeypatch.setenv("LMLAB_TEST_SECRET", "hunter2-lmlab")
    prog = textwrap.dedent(
        """
        import os
        leaks = [k for k, v in os.environ.items() if "hunter2" in v or k == "LMLAB_TEST_SECRET"]
        # Also look for it in other processes' environments (the harness's own included).
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if b"hunter2-lmlab" in f.read():
                            leaks.append(pid)
                except OSError:
                    pass
        print(sorted(os.environ))
        print("leaks", leaks)
        """
    )
    r = run_in_sandbox(prog, cfg())
    assert r.passed, r
    assert "leaks []" in r.stdout_tail
    assert "LMLAB_TEST_SECRET" not in r.stdout_tail
    assert os.environ["LMLAB_TEST_SECRET"] == "hunter2-lmlab"


def test_network_is_unreachable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    prog = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    try:
        r = run_in_sandbox(prog, cfg())
        assert not r.passed and "connected" not in r.stdout_tail
        assert r.reason.startswith("error: ") and "Error" in r.reason
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_file_size_limit():
    r = run_in_sandbox("open('big', 'wb').write(b'x' * (3 << 20))", cfg(max_file_mb=1))
    assert not r.passed and r.reason == "file size limit"


def test_parallel_threads():
    progs = [f"print({i})" if i % 2 == 0 else f"import sys\nsys.exit({i})" for i in range(6)]
    with ThreadPoolExecutor(3) as ex:
        results = list(ex.map(lambda p: run_in_sandbox(p, cfg()), progs))
    assert [r.passed for r in results] == [True, False] * 3
    assert [r.exit_code for r in results] == [0, 1, 0, 3, 0, 5]
    assert [r.stdout_tail.strip() for r in results[::2]] == ["0", "2", "4"]


def test_kill_everything_reaches_only_the_sandbox():
    # kill(-1) signals every process the caller may signal; from the sandbox that must not
    # include the harness (another uid, another PID namespace, Landlock signal scoping).
    prog = textwrap.dedent(
        """
        import os, signal, time
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        try:
            os.kill(-1, signal.SIGKILL)  # the sleeping child is the only other target
        except ProcessLookupError:
            pass
        print("survived")
        """
    )
    r = run_in_sandbox(prog, cfg())
    assert r.passed and "survived" in r.stdout_tail
    assert run_in_sandbox("print('ok')", cfg()).passed


def test_fallbacks_without_namespaces_or_landlock():
    # Namespaces and Landlock off: seccomp alone refuses the socket. All three off: the socket
    # prelude still blocks the network (best effort). Either way the program runs in its own
    # folder with a scrubbed environment.
    prog = (
        "import os, socket\nprint(sorted(os.environ))\nsocket.create_connection(('127.0.0.1', 9))"
    )
    r = run_in_sandbox(prog, cfg(use_namespaces=False, use_landlock=False))
    assert "seccomp" in r.isolation and "netns" not in r.isolation, r
    assert not r.passed and r.reason.startswith("error: PermissionError"), r
    c = cfg(use_namespaces=False, use_landlock=False, use_seccomp=False)
    r = run_in_sandbox(prog, c)
    assert "socket-prelude" in r.isolation and "netns" not in r.isolation
    assert not r.passed and "network access is disabled" in r.reason
    assert r.stdout_tail.strip() == "['HOME', 'LANG', 'PATH', 'TMPDIR']"
    r = run_in_sandbox("import sys\nprint(__name__, __file__)\nsys.exit(3)", c)
    assert r.exit_code == 3 and r.stdout_tail.strip() == "__main__ program.py"


# --- attacks contained since the nonce, namespaces, Landlock reads and seccomp ----------------


@pytest.mark.parametrize(
    "ending",
    [
        "import sys\nsys.exit(0)",
        "exit()",
        "quit()",
        "import os\nos._exit(0)",
        "raise SystemExit",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        "import os\nos.close(1)\nos.close(2)\nassert False",
        # A silent excepthook and an atexit os._exit(0) turn a failed assert into status 0.
        "import atexit, os, sys\nsys.excepthook = lambda *a: None\natexit.register(os._exit, 0)\nassert False",
        # Monkeypatching what a reporter might use does not reach the runner's own references.
        "import os, sys\nos.write = lambda *a: 0\nos._exit = lambda c: None\nsys.exit(0)",
    ],
)
def test_ending_early_is_not_a_pass(ending):
    # The completion ends the program before the failing tests (exit status 0 for most).
    r = run_in_sandbox(ending + "\nassert False, 'the tests failed'\n", cfg())
    assert not r.passed and r.reason != "passed", r
    if r.exit_code == 0:
        assert r.reason == "exited before the end of the program (exit status 0)"
    if ending.startswith("import"):
        whole = run_in_sandbox(ending.split("\n")[0] + "\nprint('end')\n", cfg())
        assert whole.passed and whole.stdout_tail == "end\n"  # its imports alone, run to the end


def _socket_dir() -> str:
    # World-writable like /tmp, and short enough for a Unix socket path.
    d = tempfile.mkdtemp(prefix="lmlab-sock-")
    os.chmod(d, 0o777)
    return d


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_host_unix_socket_is_unreachable(kind):
    server = socket.socket(socket.AF_UNIX)
    folder = _socket_dir()
    address = (
        os.path.join(folder, "s")
        if kind == "path"
        else f"\0lmlab-test-{os.getpid()}-{time.monotonic_ns()}"
    )
    try:
        server.bind(address)
        if kind == "path":
            os.chmod(address, 0o777)  # anyone may connect, by file permissions
        server.listen(1)
        server.settimeout(0.5)
        prog = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({address!r})\nprint('connected')"
        r = run_in_sandbox(prog, cfg())
        assert not r.passed and "connected" not in r.stdout_tail, r
        assert r.reason.startswith("error: ") and "Error" in r.reason
        with pytest.raises(TimeoutError):
            server.accept()
        # The same connection from outside the sandbox works: the test can fail.
        client = socket.socket(socket.AF_UNIX)
        client.connect(address)
        client.close()
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_total_write_quota_across_many_files():
    # 40 files of 4 MB each, every one below the per-file limit: the 100 MB total stops it.
    prog = textwrap.dedent(
        """
        written = 0
        try:
            for i in range(40):
                with open(f"f{i}", "wb") as f:
                    f.write(b"x" * (4 << 20))
                written += 4 << 20
        finally:
            print("written", written, flush=True)
        """
    )
    r = run_in_sandbox(prog, cfg())
    assert SandboxConfig().max_total_mb == 100
    assert "quota" in r.isolation, r
    assert not r.passed and r.reason == "disk quota", r
    written = int(r.stdout_tail.split()[-1])
    assert 80 << 20 <= written <= 100 << 20
    small = run_in_sandbox(prog.replace("range(40)", "range(3)"), cfg(max_total_mb=8))
    assert (
        not small.passed and small.reason == "disk quota" and "written 4194304" in small.stdout_tail
    )


def _read_secret_program(path: str) -> str:
    # Prints the text if it can, and also tries to smuggle it out through the error message.
    return f"text = open({path!r}).read()\nprint(text)\nassert False, text\n"


def _private_file(owner: int) -> tuple[str, str]:
    folder = tempfile.mkdtemp(prefix="lmlab-private-")
    os.chmod(folder, 0o755)  # the folder can be entered; only the file is private
    path = os.path.join(folder, "secret.txt")
    secret = f"lmlab-secret-{os.getpid()}-{time.monotonic_ns()}"
    with open(path, "w") as f:
        f.write(secret)
    os.chmod(path, 0o600)
    os.chown(folder, owner, owner)
    os.chown(path, owner, owner)
    return path, secret


def _assert_secret_kept(r, secret: str) -> None:
    assert not r.passed, r
    assert "PermissionError" in r.reason, r
    for text in (r.reason, r.stdout_tail, r.stderr_tail):
        assert secret not in text


def test_private_file_of_the_invoking_user_is_unreadable():
    path, secret = _private_file(os.geteuid())
    try:
        with open(path) as f:
            assert f.read() == secret  # readable to the invoking user itself
        _assert_secret_kept(run_in_sandbox(_read_secret_program(path), cfg()), secret)
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _unprivileged_python() -> str:
    """A system interpreter an unprivileged uid can run (the venv's may live under /root)."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    for p in (f"/usr/bin/python{v}", f"/usr/local/bin/python{v}", "/usr/bin/python3"):
        if os.path.isfile(p):
            return p
    pytest.skip("no system interpreter for the unprivileged harness")


NOBODY = 65534


def _run_as_nobody(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    src = str(Path(lmlab.__file__).resolve().parents[1])
    return subprocess.run(
        [_unprivileged_python(), "-I", "-c", f"import sys; sys.path.insert(0, {src!r})\n" + code],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the harness as an unprivileged uid")
def test_private_file_unreadable_when_the_harness_is_unprivileged():
    # The harness runs as a normal user (nobody): no uid switch, so Landlock's read rules in
    # the user namespace are what keep that user's own 0600 file out of reach.
    path, secret = _private_file(NOBODY)
    try:
        code = textwrap.dedent(
            f"""
            import json, warnings
            warnings.simplefilter("ignore")
            from lmlab.eval.sandbox import SandboxConfig, run_in_sandbox
            c = SandboxConfig(allow_code_execution=True, timeout_s=20)
            mine = open({path!r}).read()
            ok = run_in_sandbox("print('hi')", c)
            r = run_in_sandbox({_read_secret_program(path)!r}, c)
            print(json.dumps({{"mine": mine, "ok": ok.passed, "isolation": ok.isolation, "uid": r.uid,
                              "passed": r.passed, "reason": r.reason, "out": r.stdout_tail, "err": r.stderr_tail}}))
            """
        )
        p = _run_as_nobody(code)
        if p.returncode != 0 and "sandbox unavailable" in p.stderr:
            pytest.skip(f"no unprivileged sandbox here: {p.stderr.strip().splitlines()[-1]}")
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout.strip().splitlines()[-1])
        assert got["mine"] == secret and got["ok"] and got["uid"] is None
        assert {"userns", "landlock-read", "quota", "private-proc", "seccomp"} <= set(
            got["isolation"]
        )
        assert not got["passed"] and "PermissionError" in got["reason"]
        assert all(secret not in got[k] for k in ("reason", "out", "err"))
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_other_processes_command_lines_are_invisible():
    marker = f"lmlab-visible-{os.getpid()}-{time.monotonic_ns()}"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        prog = textwrap.dedent(
            f"""
            import os
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            seen = []
            for p in pids:
                try:
                    with open(f"/proc/{{p}}/cmdline", "rb") as f:
                        seen.append(f.read())
                except OSError:
                    pass
            print(len(pids), any({marker.encode()!r} in s for s in seen))
            """
        )
        r = run_in_sandbox(prog, cfg())
        assert r.passed, r
        count, found = r.stdout_tail.split()
        assert found == "False" and int(count) <= 2, r.stdout_tail  # itself (and no host process)
        assert _marked_processes(marker) == [other.pid]  # visible from outside: the test can fail
    finally:
        other.kill()
        other.wait()


def test_missing_layer_fails_closed():
    # The harness process is forbidden unshare() by a seccomp filter of its own: the sandbox
    # must refuse to run rather than run the program without namespaces.
    needs_sandbox()
    machine = os.uname().machine
    if machine not in sandbox_child.SYSCALLS:
        pytest.skip(f"no seccomp syscall table for {machine}")
    code = textwrap.dedent(
        """
        import errno, os, warnings
        warnings.simplefilter("ignore")
        from lmlab.eval import sandbox_child as sc
        from lmlab.eval.sandbox import SandboxConfig, SandboxUnavailable, run_in_sandbox
        arch, _, _, unshare_nr = sc.SYSCALLS[os.uname().machine]
        assert sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1) == 0
        assert sc.install_seccomp(sc.bpf_program(arch, [unshare_nr], None, [], errno.EPERM))
        try:
            r = run_in_sandbox("print('ran')", SandboxConfig(allow_code_execution=True))
            print("RAN", r)
        except SandboxUnavailable as e:
            print("REFUSED", e)
        r = run_in_sandbox("print('ran')", SandboxConfig(allow_code_execution=True, use_namespaces=False))
        print("WITHOUT-NAMESPACES", r.passed, r.stdout_tail.strip())
        """
    )
    src = str(Path(lmlab.__file__).resolve().parents[1])
    p = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r})\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("REFUSED sandbox unavailable: cannot create"), p.stdout
    assert "Operation not permitted" in lines[0] and "nothing was run" in lines[0]
    assert lines[1] == "WITHOUT-NAMESPACES True ran"  # asked for less, it runs: the filter works
