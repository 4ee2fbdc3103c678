"""Run untrusted (model-written) Python in a separate, restricted process.

Nothing here runs unless the caller opts in with ``SandboxConfig(allow_code_execution=True)``
(on the command line: ``--allow-code-execution``); without it :func:`run_in_sandbox` raises
:class:`~lmlab.errors.LmlabError`. The sandbox is defence in depth, not a guarantee: run
code you did not write only on a machine you can afford to lose.

A program **passes** only when every one of its statements ran: the harness hands the child a
random nonce through a pipe (never in the program's text, files, environment or argv), and the
runner writes it back on a separate fd after the program's last statement. Exit status 0 alone
(``sys.exit(0)``, ``exit()``, ``os._exit(0)``, a closed stdout, ...) is not a pass. The nonce
defeats a program that ends early; code written to dig it out of the runner's own frame (it
shares the process) could still forge it, as it could fool any in-process harness.

How one program runs (:mod:`lmlab.eval.sandbox_child` does the child's part;
``SandboxResult.isolation`` lists the layers applied):

1. A launcher (``sys.executable -I -S sandbox_child.py``) starts in a new session with a
   scrubbed environment (only PATH, HOME, TMPDIR, LANG) and a fresh temporary folder as cwd.
2. New mount, network, PID and IPC namespaces (as root directly, otherwise inside a new user
   namespace that maps only the caller's own uid). The network namespace has no usable
   interface, so no host port and no abstract Unix socket can be reached. The working folder
   becomes a tmpfs of ``max_total_mb`` (the total the program may write, over all its files)
   and ``max_files`` inodes. The program is PID 1 of its namespace, sees only its own
   processes in a /proc of its own, and when it ends the kernel kills everything it left.
3. As root the child switches to a fresh unused uid/gid without supplementary groups, so
   RLIMIT_NPROC applies and it owns nothing: the invoking user's private (0600) files are
   unreadable by plain permissions.
4. Landlock (Linux >= 5.13): writes only beneath the working folder (and /dev/null); reads
   only the interpreter's executable and lib folders, system folders (/usr, /lib*, /bin,
   /sbin, /etc), a few devices and its own /proc, so a normal user's files stay unreadable
   too; with ABI >= 4 TCP bind/connect are refused, with ABI >= 6 abstract Unix sockets and
   signals are scoped to the sandbox.
5. seccomp: ``socket()`` is refused for every family but IPv4/IPv6 (which meet the empty
   network namespace), so no Unix socket of the host (a path one included) can be
   connected; io_uring, whose requests would bypass that filter, is refused too.
6. Resource limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_FSIZE (each file,
   stdout and stderr included), no core files; plus a wall-clock timeout after which the
   whole process group is killed.

A layer that is asked for (all are, by default) and cannot be applied makes
:func:`run_in_sandbox` raise :class:`SandboxUnavailable` naming it: nothing runs with less
isolation than asked. ``use_namespaces``, ``use_landlock`` and ``use_seccomp`` switch layers
off explicitly (tests of the fallbacks, kernels that misbehave); with neither a network
namespace, Landlock's TCP rules nor seccomp, a prelude replaces the ``socket`` functions
(best effort only: ``_socket`` remains reachable). Without namespaces there is no total quota
and no private /proc.

When the harness's interpreter is not reachable by the sandbox uid (e.g. a pyenv build under
/root, mode 0700) a same-version system interpreter runs the program; ``SandboxResult.python``
names it. After every run the harness kills the launcher's process group and, in the root/uid
mode, every process still owned by the sandbox uid, then deletes the working folder.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

OPT_IN_HINT = (
    "running model-written code is disabled; opt in with --allow-code-execution "
    "(Python: SandboxConfig(allow_code_execution=True)). It runs in a sandbox, but no sandbox "
    "is perfect: only do this on a machine you can afford to lose"
)

# Sandbox uids are drawn from this range when the harness runs as root; nothing on a normal
# system owns them, so RLIMIT_NPROC counts only the sandboxed processes.
_UID_RANGE = (1_900_000_000, 2_000_000_000)
_MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class SandboxConfig:
    """Limits for one sandboxed program run."""

    allow_code_execution: bool = False  # explicit opt-in; without it nothing runs
    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # RLIMIT_AS (address space) of each process
    cpu_s: int = 0  # RLIMIT_CPU per process; 0 means ceil(timeout_s) + 1
    max_processes: int = 16  # RLIMIT_NPROC (processes/threads the program may have)
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file (and stdout/stderr) it may write
    max_total_mb: int = 100  # what it may write in all, over all its files (tmpfs size)
    max_files: int = 10_000  # files and folders it may create (tmpfs inodes)
    python: str = field(default_factory=lambda: sys.executable)  # interpreter for the program
    stderr_tail_chars: int = 2000
    # Layers can be switched off to test the fallbacks, or where a kernel misbehaves.
    use_namespaces: bool = True
    use_landlock: bool = True
    use_seccomp: bool = True


@dataclass
class SandboxResult:
    """What happened to one program."""

    passed: bool  # ran to its last statement (the nonce came back) within the limits
    timed_out: bool
    exit_code: int | None  # the program's exit status; negative: killed by that signal
    reason: str  # "passed", "timeout", "memory limit", "exited before the end ...", "error: <last line>", ...
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration_s: float = 0.0
    isolation: list[str] = field(default_factory=list)  # layers actually applied
    uid: int | None = None  # the sandbox uid in root mode
    python: str = ""  # the interpreter that ran the program


class SandboxUnavailable(LmlabError):
    """A sandbox layer that was asked for cannot be applied on this system: nothing ran."""


def require_opt_in(cfg: SandboxConfig) -> None:
    """Raise LmlabError unless the user explicitly allowed code execution."""
    if not cfg.allow_code_execution:
        raise LmlabError(OPT_IN_HINT)
    _warn_once()


_warned = False
_warn_lock = threading.Lock()


def _warn_once() -> None:
    global _warned
    with _warn_lock:
        if not _warned:
            _warned = True
            warnings.warn(
                "lmlab will execute model-written code in a sandbox (--allow-code-execution); "
                "the sandbox limits damage but is not a security boundary you should bet on",
                RuntimeWarning,
                stacklevel=3,
            )


def _scan_uid(uid: int) -> list[tuple[int, int]]:
    """(pid, threads) of live (non-zombie) processes whose real uid is ``uid``, from /proc."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            real_uid = int(fields["Uid"].split()[0])
            state = fields["State"].split()[0]
            threads = int(fields.get("Threads", "1").strip() or 1)
        except (KeyError, ValueError, IndexError):
            continue
        if real_uid == uid and state != "Z":
            found.append((int(name), threads))
    return found


def _proc_uid_pids(uid: int) -> list[int]:
    return [pid for pid, _ in _scan_uid(uid)]


def processes_of_uid(uid: int) -> list[int]:
    """Public for tests and diagnostics: live processes still running as a sandbox uid."""
    return _proc_uid_pids(uid)


def _kill_uid(uid: int, rounds: int = 100) -> None:
    # Repeat: a process may fork between our scan and the kill (bounded by RLIMIT_NPROC).
    for _ in range(rounds):
        pids = _proc_uid_pids(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pick_uid() -> int:
    rng = random.SystemRandom()
    while True:
        uid = rng.randrange(*_UID_RANGE)
        if not _proc_uid_pids(uid):
            return uid


def _count_own_tasks() -> int:
    # RLIMIT_NPROC counts threads, not just processes.
    return sum(threads for _, threads in _scan_uid(os.getuid()))


def _interpreters(python: str) -> list[str]:
    """``python`` first, then same-version system interpreters the sandbox uid may reach."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    names = [python, os.path.realpath(python)]
    names += [f"{d}/python{v}" for d in ("/usr/local/bin", "/usr/bin")]
    names += [f"{d}/python3" for d in ("/usr/local/bin", "/usr/bin")]
    return list(dict.fromkeys(names))


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * chars))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")[-chars:]


def _classify(status: int | None, timed_out: bool, stderr: str, finished: bool) -> tuple[bool, str]:
    if timed_out:
        return False, "timeout"
    if status is None:
        return False, "sandbox error: no exit status"
    if status == 0:
        if finished:
            return True, "passed"
        return False, "exited before the end of the program (exit status 0)"
    if status < 0:
        sig = -status
        if sig == signal.SIGXCPU:
            return False, "cpu time limit"
        if sig == signal.SIGXFSZ:
            return False, "file size limit"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return False, f"killed by {name}"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else f"exit status {status}"
    if last.startswith("MemoryError") or "Cannot allocate memory" in last:
        return False, "memory limit"
    if "[Errno 27]" in last:  # EFBIG: Python ignores SIGXFSZ, so the write fails instead
        return False, "file size limit"
    if "[Errno 28]" in last:  # ENOSPC: the working folder's tmpfs is full
        return False, "disk quota"
    if "lmlab sandbox: cannot exec" in last:
        return False, f"sandbox error: {last}"
    return False, f"error: {last[:200]}"


_CHILD = Path(__file__).with_name("sandbox_child.py")


def _prefixes(python: str) -> list[str]:
    """Our own prefixes when the program runs under our interpreter (a venv and its base)."""
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        return []
    return sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})


def _read_info(path: Path) -> dict:
    info: dict = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            info.update(obj)
    return info


def _check_limits(cfg: SandboxConfig) -> None:
    limits = (
        cfg.timeout_s,
        cfg.memory_mb,
        cfg.max_processes,
        cfg.max_file_mb,
        cfg.max_total_mb,
        cfg.max_files,
    )
    if min(limits) <= 0:
        raise LmlabError(
            "sandbox limits (timeout_s, memory_mb, max_processes, max_file_mb, max_total_mb, "
            "max_files) must be positive"
        )


def _write_program(workdir: Path, program: str, uid: int | None) -> None:
    """program.py in the private working folder, owned by the sandbox uid when there is one."""
    (workdir / "program.py").write_text(program, encoding="utf-8")
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(workdir / "program.py", uid, uid)
    os.chmod(workdir, 0o700)


def _child_args(
    cfg: SandboxConfig, workdir: Path, uid: int | None, fds: tuple[int, int, int]
) -> dict[str, Any]:
    """What sandbox_child.py is told (as JSON): interpreters, limits, fds and layers to apply."""
    info_fd, nonce_fd, result_fd = fds
    # Without a uid of its own the program shares our RLIMIT_NPROC count: allow our
    # current processes plus its budget so our own forks keep working meanwhile.
    nproc = cfg.max_processes if uid is not None else _count_own_tasks() + cfg.max_processes
    return {
        "pythons": _interpreters(cfg.python),
        "prefixes": _prefixes(cfg.python),
        "workdir": str(workdir),
        "uid": uid,
        "nproc": nproc,
        "cpu_s": cfg.cpu_s or int(cfg.timeout_s) + 2,
        "fsize": cfg.max_file_mb << 20,
        "quota": cfg.max_total_mb << 20,
        "inodes": cfg.max_files,
        "memory": cfg.memory_mb << 20,
        "info_fd": info_fd,
        "nonce_fd": nonce_fd,
        "result_fd": result_fd,
        "namespaces": cfg.use_namespaces,
        "landlock": cfg.use_landlock,
        "seccomp": cfg.use_seccomp,
    }


def _start_child(args: dict[str, Any], workdir: Path, out: Any, err: Any) -> subprocess.Popen:
    env = {
        "PATH": _MINIMAL_PATH,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
    }
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(_CHILD), json.dumps(args)],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        pass_fds=(args["info_fd"], args["nonce_fd"], args["result_fd"]),
        start_new_session=True,
    )


def _wait_then_kill(proc: subprocess.Popen, timeout_s: float, uid: int | None) -> bool:
    """Wait up to ``timeout_s``, then kill what is left; True when it timed out."""
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # 1. the launcher's group, 2. anything left under the sandbox uid.
        _kill_group(proc.pid)
        proc.wait()
        if uid is not None:
            _kill_uid(uid)
    return timed_out


def _sandbox_result(
    cfg: SandboxConfig,
    logdir: Path,
    proc: subprocess.Popen,
    nonce: bytes,
    timed_out: bool,
    duration: float,
    uid: int | None,
) -> SandboxResult:
    """How the program ended, from the child's info file, its output and the result fd."""
    info_obj = _read_info(logdir / "info")
    if "unavailable" in info_obj:
        raise SandboxUnavailable(f"sandbox unavailable: {info_obj['unavailable']}; nothing was run")
    status: int | None = proc.returncode
    if "status" in info_obj:
        status = os.waitstatus_to_exitcode(int(info_obj["status"]))
    finished = (logdir / "result").read_bytes()[:256] == nonce
    stderr_tail = _tail(logdir / "stderr", cfg.stderr_tail_chars)
    stdout_tail = _tail(logdir / "stdout", cfg.stderr_tail_chars)
    passed, reason = _classify(status, timed_out, stderr_tail, finished)
    return SandboxResult(
        passed=passed,
        timed_out=timed_out,
        exit_code=None if timed_out else status,
        reason=reason,
        stdout_tail=stdout_tail,
        stderr_tail=stderr_tail,
        duration_s=duration,
        isolation=list(info_obj.get("isolation", [])),
        uid=uid,
        python=str(info_obj.get("python", "")),
    )


def run_in_sandbox(program: str, cfg: SandboxConfig) -> SandboxResult:
    """Run the Python source ``program`` in the sandbox and report how it ended.

    Raises LmlabError when ``cfg.allow_code_execution`` is not set, and SandboxUnavailable when
    a layer it asks for cannot be applied here (the program does not run). Never raises for
    anything the program does: failures, timeouts and limit hits come back in the result.
    """
    require_opt_in(cfg)
    _check_limits(cfg)
    uid = _pick_uid() if os.geteuid() == 0 else None
    workdir = Path(tempfile.mkdtemp(prefix="lmlab-sandbox-"))
    logdir = Path(tempfile.mkdtemp(prefix="lmlab-sandbox-log-"))  # private to the harness
    nonce = secrets.token_hex(16).encode()
    nonce_r, nonce_w = os.pipe()
    t0 = time.monotonic()
    try:
        os.write(nonce_w, nonce)
        os.close(nonce_w)
        nonce_w = -1
        _write_program(workdir, program, uid)
        with (
            open(logdir / "stdout", "wb") as out,
            open(logdir / "stderr", "wb") as err,
            open(logdir / "info", "wb") as info,
            open(logdir / "result", "wb") as result,
        ):
            args = _child_args(cfg, workdir, uid, (info.fileno(), nonce_r, result.fileno()))
            proc = _start_child(args, workdir, out, err)
            os.close(nonce_r)
            nonce_r = -1
            timed_out = _wait_then_kill(proc, cfg.timeout_s, uid)
        duration = time.monotonic() - t0
        return _sandbox_result(cfg, logdir, proc, nonce, timed_out, duration, uid)
    finally:
        for fd in (nonce_r, nonce_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)
