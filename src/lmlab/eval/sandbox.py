"""Run untrusted (model-written) Python in a separate, restricted process.

Nothing here runs unless the caller opts in with ``SandboxConfig(allow_code_execution=True)``
(on the command line: ``--allow-code-execution``); without it :func:`run_in_sandbox` raises
:class:`~lmlab.errors.LmlabError`. The sandbox is defence in depth, not a guarantee: run
code you did not write only on a machine you can afford to lose.

How one program runs (each layer is used when the OS allows it; ``SandboxResult.isolation``
lists the layers that were actually applied):

1. A launcher (``sys.executable -I -S -c ...``) starts in a new session with a scrubbed
   environment (only PATH, HOME, TMPDIR, LANG) and a fresh temporary working folder as cwd.
2. It enters new network and PID namespaces (``unshare``; as root directly, otherwise inside a
   new user namespace). The network namespace has no usable interface, so nothing can be
   reached. The program becomes PID 1 of its namespace: when it exits or is killed the kernel
   kills every process it left behind, including ones that called ``setsid()``.
3. When the harness runs as root it switches to a fresh unused uid/gid (no supplementary
   groups). RLIMIT_NPROC is not enforced for root, so this is what makes the process-count
   limit work there; the uid also owns nothing, so it cannot write to files or folders it
   does not own (only world-writable places, closed by the next layer).
4. Landlock (Linux >= 5.13): file-system writes are allowed only beneath the working folder
   (and to /dev/null); with Landlock ABI >= 4 TCP bind/connect are refused as well.
5. Resource limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_FSIZE, no core files;
   plus a wall-clock timeout after which the whole process group is killed.
6. When neither a network namespace nor Landlock's TCP rules are available, a prelude
   replaces ``socket`` functions before the program runs: best effort only (``_socket``
   remains reachable).

Not restricted: reading files the sandbox uid may read (the interpreter needs its stdlib), and
CPU use within RLIMIT_CPU. When the harness's interpreter is not reachable by the sandbox uid
(e.g. a pyenv build under /root, mode 0700) a same-version system interpreter runs the program;
``SandboxResult.python`` names it.

After every run the harness kills the launcher's process group and, in the root/uid mode,
every process still owned by the sandbox uid, then deletes the working folder.
"""

from __future__ import annotations

import json
import os
import random
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
    python: str = field(default_factory=lambda: sys.executable)  # interpreter for the program
    stderr_tail_chars: int = 2000
    # Layers can be switched off to test the fallbacks, or where a kernel misbehaves.
    use_namespaces: bool = True
    use_landlock: bool = True


@dataclass
class SandboxResult:
    """What happened to one program."""

    passed: bool  # exited with status 0 within the limits
    timed_out: bool
    exit_code: int | None  # the program's exit status; negative: killed by that signal
    reason: str  # "passed", "timeout", "memory limit", "cpu time limit", "error: <last line>", ...
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration_s: float = 0.0
    isolation: list[str] = field(default_factory=list)  # layers actually applied
    uid: int | None = None  # the sandbox uid in root mode
    python: str = ""  # the interpreter that ran the program


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


# The launcher runs in the child, before the untrusted program: it applies the namespaces,
# uid switch, Landlock rules and rlimits, then execs a fresh interpreter on program.py.
# Keeping this in a separate process (instead of Popen(preexec_fn=...)) keeps the harness
# safe to call from several threads at once.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
a = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
applied = []

def prctl(op, arg):
    return libc.prctl(ctypes.c_int(op), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))

def unshare(flags):
    return libc.unshare(ctypes.c_int(flags)) == 0

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
NEWNET, NEWPID, NEWUSER = 0x40000000, 0x20000000, 0x10000000
prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
root = os.geteuid() == 0
netns = pidns = False
if not a["namespaces"]:
    pass
elif root:
    if unshare(NEWNET | NEWPID):
        netns = pidns = True
    else:
        netns = unshare(NEWNET)
        pidns = unshare(NEWPID)
elif unshare(NEWUSER | NEWNET | NEWPID):
    applied.append("userns")
    netns = pidns = True
if netns:
    applied.append("netns")
if pidns:
    applied.append("pidns")
    pid = os.fork()
    if pid:
        # The launcher stays outside the namespace and relays the program's wait status.
        _, status = os.waitpid(pid, 0)
        os.write(a["info_fd"], (json.dumps({"status": status}) + "\n").encode())
        os._exit(0)

def landlock(rw_dirs, rw_files):
    abi = libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    fs = sum(1 << i for i in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # every write-like right
    if abi >= 2:
        fs |= 1 << 13  # REFER
    if abi >= 3:
        fs |= 1 << 14  # TRUNCATE
    net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, with no rule allowing any port
    scoped = 3 if abi >= 6 else 0  # abstract unix sockets and signals stay inside
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    rfd = libc.syscall(ctypes.c_long(444), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rfd < 0:
        return 0

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    file_rights = (1 << 1) | ((1 << 14) if abi >= 3 else 0)
    for path, rights in [(d, fs) for d in rw_dirs] + [(f, file_rights) for f in rw_files]:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        rule = PathBeneath(rights, pfd)
        r = libc.syscall(ctypes.c_long(445), ctypes.c_int(rfd), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        os.close(pfd)
        if r != 0:
            return 0
    if libc.syscall(ctypes.c_long(446), ctypes.c_int(rfd), ctypes.c_uint32(0)) != 0:
        return 0
    os.close(rfd)
    return abi

R = resource
R.setrlimit(R.RLIMIT_CORE, (0, 0))
R.setrlimit(R.RLIMIT_CPU, (a["cpu_s"], a["cpu_s"] + 1))
R.setrlimit(R.RLIMIT_FSIZE, (a["fsize"], a["fsize"]))
R.setrlimit(R.RLIMIT_NPROC, (a["nproc"], a["nproc"]))
if root and a["uid"] is not None:
    os.setgroups([])
    os.setresgid(a["uid"], a["uid"], a["uid"])
    os.setresuid(a["uid"], a["uid"], a["uid"])
    applied.append("uid")
prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change cleared it
prctl(PR_SET_NO_NEW_PRIVS, 1)
abi = landlock([a["workdir"]], ["/dev/null"]) if a["landlock"] else 0
if abi:
    applied.append("landlock-fs")
    if abi >= 4:
        applied.append("landlock-tcp")
# The first interpreter this uid may execute (a root-only one, e.g. under /root, is skipped).
python = next((p for p in a["pythons"] if os.access(p, os.X_OK)), a["pythons"][0])
argv = [python, "-I", "program.py"]
if not netns and abi < 4:
    applied.append("socket-prelude")
    argv = [python, "-I", "-c", a["prelude"]]
R.setrlimit(R.RLIMIT_AS, (a["memory"], a["memory"]))
applied.append("rlimits")
os.write(a["info_fd"], (json.dumps({"isolation": applied, "python": python}) + "\n").encode())
os.close(a["info_fd"])
try:
    os.execve(python, argv, dict(os.environ))
except OSError as e:
    os.write(2, f"lmlab sandbox: cannot exec {python}: {e}\n".encode())
    os._exit(126)
"""

# Best-effort network block for systems with neither network namespaces nor Landlock TCP rules.
_PRELUDE = r"""
import socket as _socket_mod
def _lmlab_no_network(*args, **kwargs):
    raise OSError("network access is disabled in the lmlab sandbox")
for _name in ("socket", "create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
    setattr(_socket_mod, _name, _lmlab_no_network)
del _socket_mod, _lmlab_no_network, _name
__file__ = "program.py"
with open("program.py", encoding="utf-8") as _f:
    _src = _f.read()
del _f
exec(compile(_src, "program.py", "exec"))
"""


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


def _classify(status: int | None, timed_out: bool, stderr: str) -> tuple[bool, str]:
    if timed_out:
        return False, "timeout"
    if status is None:
        return False, "sandbox error: no exit status"
    if status == 0:
        return True, "passed"
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
    if "lmlab sandbox: cannot exec" in last:
        return False, f"sandbox error: {last}"
    return False, f"error: {last[:200]}"


def run_in_sandbox(program: str, cfg: SandboxConfig) -> SandboxResult:
    """Run the Python source ``program`` in the sandbox and report how it ended.

    Raises LmlabError when ``cfg.allow_code_execution`` is not set. Never raises for anything
    the program does: failures, timeouts and limit hits come back in the result.
    """
    require_opt_in(cfg)
    if cfg.timeout_s <= 0 or cfg.memory_mb <= 0 or cfg.max_processes <= 0 or cfg.max_file_mb <= 0:
        raise LmlabError(
            "sandbox limits (timeout_s, memory_mb, max_processes, max_file_mb) must be positive"
        )
    root = os.geteuid() == 0
    uid = _pick_uid() if root else None
    workdir = Path(tempfile.mkdtemp(prefix="lmlab-sandbox-"))
    logdir = Path(tempfile.mkdtemp(prefix="lmlab-sandbox-log-"))  # private to the harness
    t0 = time.monotonic()
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(workdir / "program.py", uid, uid)
        os.chmod(workdir, 0o700)
        # Without a uid of its own the program shares our RLIMIT_NPROC count: allow our
        # current processes plus its budget so our own forks keep working meanwhile.
        nproc = cfg.max_processes if uid is not None else _count_own_tasks() + cfg.max_processes
        with (
            open(logdir / "stdout", "wb") as out,
            open(logdir / "stderr", "wb") as err,
            open(logdir / "info", "wb") as info,
        ):
            args = {
                "pythons": _interpreters(cfg.python),
                "workdir": str(workdir),
                "uid": uid,
                "nproc": nproc,
                "cpu_s": cfg.cpu_s or int(cfg.timeout_s) + 2,
                "fsize": cfg.max_file_mb << 20,
                "memory": cfg.memory_mb << 20,
                "info_fd": info.fileno(),
                "prelude": _PRELUDE,
                "namespaces": cfg.use_namespaces,
                "landlock": cfg.use_landlock,
            }
            env = {
                "PATH": _MINIMAL_PATH,
                "HOME": str(workdir),
                "TMPDIR": str(workdir),
                "LANG": "C.UTF-8",
            }
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(args)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(info.fileno(),),
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=cfg.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # 1. the launcher's group, 2. anything left under the sandbox uid.
                _kill_group(proc.pid)
                proc.wait()
                if uid is not None:
                    _kill_uid(uid)
        duration = time.monotonic() - t0
        status: int | None = proc.returncode
        isolation: list[str] = []
        python = ""
        for line in (logdir / "info").read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "isolation" in obj:
                isolation = list(obj["isolation"])
                python = str(obj.get("python", ""))
            if "status" in obj:
                status = os.waitstatus_to_exitcode(int(obj["status"]))
        stderr_tail = _tail(logdir / "stderr", cfg.stderr_tail_chars)
        stdout_tail = _tail(logdir / "stdout", cfg.stderr_tail_chars)
        passed, reason = _classify(status, timed_out, stderr_tail)
        return SandboxResult(
            passed=passed,
            timed_out=timed_out,
            exit_code=None if timed_out else status,
            reason=reason,
            stdout_tail=stdout_tail,
            stderr_tail=stderr_tail,
            duration_s=duration,
            isolation=isolation,
            uid=uid,
            python=python,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)
