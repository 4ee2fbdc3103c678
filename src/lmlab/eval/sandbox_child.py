"""The child side of :mod:`lmlab.eval.sandbox`: confine this process, then run program.py.

Started by the harness as ``python -I -S sandbox_child.py ARGS_JSON`` in a new session, with
the sandbox's working folder (holding ``program.py``) as cwd. Standard library only, and no
lmlab imports: it runs without site-packages, before the untrusted program. Keeping it a
separate process (instead of ``Popen(preexec_fn=...)``) keeps the harness thread-safe.

Steps (each reported in the ``isolation`` list it writes to the harness's info fd; a layer
that is asked for and cannot be applied stops here with ``{"unavailable": reason}`` and the
program never runs: the sandbox fails closed):

1. New user (when not root), mount, network, PID and IPC namespaces. The mount namespace gets
   a tmpfs of ``quota`` bytes as the working folder (the total the program can write) and,
   in the forked PID-1 child, a /proc of its own PID namespace (no other process visible).
2. Root only: a fresh unused uid/gid without supplementary groups.
3. rlimits, no new privileges, Landlock (writes only in the working folder; reads only the
   interpreter, system folders and its own /proc; TCP refused; abstract Unix sockets and
   signals scoped) and a seccomp filter (``socket()`` only for IPv4/IPv6 inside the empty
   network namespace, never AF_UNIX, AF_VSOCK, ...; no io_uring, whose requests would bypass
   the filter; any other syscall ABI than the native one kills the process).
4. ``exec`` of the interpreter on :data:`RUNNER`, which writes the harness's nonce to the
   result fd only after every statement of program.py has run.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 38, 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY, MS_REC, MS_PRIVATE = 2, 4, 8, 1, 16384, 1 << 18
AF_INET, AF_INET6 = 2, 10

# Syscall ABI per machine: (seccomp audit arch, socket, io_uring_setup, unshare).
# Landlock's three syscalls are 444-446 on every architecture.
SYSCALLS = {
    "x86_64": (0xC000003E, 41, 425, 272),
    "aarch64": (0xC00000B7, 198, 425, 97),
}
LANDLOCK_CREATE, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT = 444, 445, 446

# Landlock file-system rights (uapi/linux/landlock.h).
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
READ_TREE = READ_FILE | READ_DIR | EXECUTE
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

# System folders every interpreter reads (shared libraries, ld.so.cache, locales, zoneinfo).
SYSTEM_READ = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc"]
DEVICES_READ = ["/dev/zero", "/dev/urandom", "/dev/random", "/dev/full"]

# Runs in the final interpreter. The nonce comes through a pipe the harness already closed on
# its side; it is not in program.py, the environment or argv, so a program that ends early
# (sys.exit, os._exit, a signal, closed or redirected fds) cannot report success.
RUNNER = r"""
def _lmlab_run(nonce_fd, result_fd, prelude):
    import os, sys
    write, flush_out, flush_err, leave = os.write, sys.stdout.flush, sys.stderr.flush, os._exit
    nonce = os.read(nonce_fd, 256)
    os.close(nonce_fd)
    if prelude:
        import socket as sock
        def no_network(*args, **kwargs):
            raise OSError("network access is disabled in the lmlab sandbox")
        for name in ("socket", "create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
            setattr(sock, name, no_network)
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec", dont_inherit=True)
    import __main__
    g = __main__.__dict__
    builtins = g["__builtins__"]
    g.clear()
    g.update({"__name__": "__main__", "__file__": "program.py", "__builtins__": builtins,
              "__doc__": None, "__package__": None, "__spec__": None, "__loader__": None})
    sys.argv = ["program.py"]
    exec(code, g)
    # Reached only when every statement of the program ran: report it, and leave before
    # anything the program registered (atexit, threads) can run.
    try:
        flush_out()
        flush_err()
    except BaseException:
        pass
    write(result_fd, nonce)
    leave(0)
"""

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def prctl(op: int, arg: int | ctypes.c_void_p = 0, arg2: int = 0) -> int:
    a1 = arg if isinstance(arg, ctypes.c_void_p) else ctypes.c_ulong(arg)
    z = ctypes.c_ulong(0)
    return libc.prctl(ctypes.c_int(op), a1, ctypes.c_ulong(arg2), z, z)


def last_error() -> str:
    return os.strerror(ctypes.get_errno())


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        raise OSError(ctypes.get_errno(), f"mount {fstype or ''} on {target}: {last_error()}")


# --- seccomp ----------------------------------------------------------------------------------


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def bpf_program(
    arch: int, deny: list[int], socket_nr: int | None, families: list[int], err: int
) -> list[tuple]:
    """A classic-BPF seccomp filter: deny ``deny`` syscalls (and ``socket()`` outside
    ``families`` when ``socket_nr`` is given) with errno ``err``; kill a foreign ABI."""
    LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000 | err
    prog: list[tuple] = [(LD, 0, 0, 4), (JEQ, "nr", "kill", arch), ("kill", RET, 0, 0, KILL)]
    prog += [("nr", LD, 0, 0, 0), (JGE, "deny", 0, 0x40000000)]  # x32 calls share x86_64's arch
    prog += [(JEQ, "deny", 0, nr) for nr in deny]
    if socket_nr is not None:
        prog += [(JEQ, "socket", "allow", socket_nr), ("socket", LD, 0, 0, 16)]  # args[0], low half
        prog += [(JEQ, "allow", 0, fam) for fam in families]
    else:
        prog += [(RET, 0, 0, ALLOW)]
    prog += [("deny", RET, 0, 0, ERRNO), ("allow", RET, 0, 0, ALLOW)]
    labels = {ins[0]: i for i, ins in enumerate(prog) if isinstance(ins[0], str)}
    out = []
    for i, ins in enumerate(prog):
        code, jt, jf, k = ins[1:] if isinstance(ins[0], str) else ins
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out.append((code, jt, jf, k))
    return out


def install_seccomp(prog: list[tuple]) -> bool:
    """Install ``prog`` for this process and its children (needs no_new_privs or root)."""
    arr = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), arr)
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog)) == 0


# --- Landlock ---------------------------------------------------------------------------------


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    abi = libc.syscall(ctypes.c_long(LANDLOCK_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, abi)


def landlock(abi: int, rules: list[tuple[str, int]]) -> str:
    """Restrict this process to ``rules`` (path, rights); return "" or why it failed."""
    fs = sum(1 << i for i in range(13))  # EXECUTE .. MAKE_SYM
    fs |= (
        (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0) | (IOCTL_DEV if abi >= 5 else 0)
    )
    net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, with no rule allowing any port
    scoped = 3 if abi >= 6 else 0  # abstract unix sockets and signals stay inside
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    rfd = libc.syscall(
        ctypes.c_long(LANDLOCK_CREATE),
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
    )
    if rfd < 0:
        return f"landlock_create_ruleset: {last_error()}"
    for path, rights in rules:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # absent on this system
        is_dir = os.path.isdir(f"/proc/self/fd/{pfd}")
        rule = PathBeneath(rights & fs & (~0 if is_dir else FILE_RIGHTS), pfd)
        r = libc.syscall(
            ctypes.c_long(LANDLOCK_ADD_RULE),
            ctypes.c_int(rfd),
            ctypes.c_int(1),
            ctypes.byref(rule),
            ctypes.c_uint32(0),
        )
        os.close(pfd)
        if r != 0:
            return f"landlock_add_rule {path}: {last_error()}"
    if libc.syscall(ctypes.c_long(LANDLOCK_RESTRICT), ctypes.c_int(rfd), ctypes.c_uint32(0)) != 0:
        return f"landlock_restrict_self: {last_error()}"
    os.close(rfd)
    return ""


def interpreter_reads(python: str, prefixes: list[str]) -> list[tuple[str, int]]:
    """What the interpreter must read: its executable, and lib/ and pyvenv.cfg of its prefixes
    (never a prefix whole: a python under a home folder must not open the home folder)."""
    rules = [(python, READ_FILE | EXECUTE), (os.path.realpath(python), READ_FILE | EXECUTE)]
    roots = set(prefixes)
    for p in (python, os.path.realpath(python)):
        roots.add(os.path.dirname(os.path.dirname(p)))
    for root in sorted(roots):
        rules += [(os.path.join(root, sub), READ_TREE) for sub in ("lib", "lib64", "pyvenv.cfg")]
    return rules


# --- the launcher -----------------------------------------------------------------------------


class _Launch:
    """The launcher's arguments, its report pipe to the harness, and the layers applied so far."""

    def __init__(self, args: dict) -> None:
        self.a = args
        self.applied: list[str] = []
        self.root = os.geteuid() == 0
        self.uid, self.gid = os.getuid(), os.getgid()  # before unshare: outside the user namespace
        self.sandbox_uid = args["uid"] if self.root else None

    def report(self, obj: dict) -> None:
        os.write(self.a["info_fd"], (json.dumps(obj) + "\n").encode())

    def unavailable(self, why: str) -> None:
        """Fail closed: say why, and the program never runs."""
        self.report({"unavailable": why})
        os._exit(125)


def _unshare(launch: _Launch) -> None:
    """Step 1a: new user (when not root), mount, network, PID and IPC namespaces."""
    root = launch.root
    flags = (
        CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | (0 if root else CLONE_NEWUSER)
    )
    if libc.unshare(ctypes.c_int(flags)) != 0:
        hint = (
            ""
            if root
            else (
                " (unprivileged user namespaces are disabled here: see sysctl user.max_user_namespaces, "
                "kernel.unprivileged_userns_clone or kernel.apparmor_restrict_unprivileged_userns)"
            )
        )
        launch.unavailable(
            f"cannot create {'' if root else 'user, '}mount, network and PID namespaces: {last_error()}{hint}"
        )


def _mount_workdir(launch: _Launch, program: bytes) -> None:
    """Step 1b: map our ids (user namespace), then a tmpfs of ``quota`` bytes as the working
    folder, holding a fresh copy of program.py."""
    a, sandbox_uid = launch.a, launch.sandbox_uid
    try:
        if not launch.root:
            # Map our own uid/gid so files keep an owner; no setgroups (required to map gid).
            uid, gid = launch.uid, launch.gid
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{uid} {uid} 1"),
                ("gid_map", f"{gid} {gid} 1"),
            ):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            launch.applied.append("userns")
        launch.applied += ["netns", "pidns", "ipcns", "mountns"]
        mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing mounted here reaches the host
        owner = f",uid={sandbox_uid},gid={sandbox_uid}" if sandbox_uid is not None else ""
        mount(
            "lmlab-sandbox",
            a["workdir"],
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            f"size={a['quota']},nr_inodes={a['inodes']},mode=0700{owner}",
        )
        os.chdir(a["workdir"])  # the fresh tmpfs over the harness's folder
        fd = os.open("program.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, program)
        os.close(fd)
        if sandbox_uid is not None:
            os.chown("program.py", sandbox_uid, sandbox_uid)
        launch.applied.append("quota")
    except OSError as e:
        launch.unavailable(f"namespace setup failed: {e}")


def _enter_pid_namespace(launch: _Launch) -> None:
    """Step 1c: fork PID 1 of the new namespace; the launcher stays outside and relays the
    program's wait status. The child gets a /proc of its own namespace (or none at all)."""
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        launch.report({"status": status})
        os._exit(0)
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        launch.applied.append("private-proc")
    except OSError as e:
        try:  # a kernel that refuses a proc mount here: hide /proc altogether
            mount(
                "lmlab-noproc",
                "/proc",
                "tmpfs",
                MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
                "size=4k",
            )
            launch.applied.append("empty-proc")
        except OSError:
            launch.unavailable(f"cannot give the sandbox its own /proc ({e})")


def _limit_and_drop_privileges(launch: _Launch) -> None:
    """Steps 2-3a: rlimits (but the address space, set last), a fresh uid when root, no new privileges."""
    a, sandbox_uid = launch.a, launch.sandbox_uid
    R = resource
    R.setrlimit(R.RLIMIT_CORE, (0, 0))
    R.setrlimit(R.RLIMIT_CPU, (a["cpu_s"], a["cpu_s"] + 1))
    R.setrlimit(R.RLIMIT_FSIZE, (a["fsize"], a["fsize"]))
    R.setrlimit(R.RLIMIT_NPROC, (a["nproc"], a["nproc"]))
    if sandbox_uid is not None:
        os.setgroups([])
        os.setresgid(sandbox_uid, sandbox_uid, sandbox_uid)
        os.setresuid(sandbox_uid, sandbox_uid, sandbox_uid)
        launch.applied.append("uid")
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change cleared it
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def _apply_landlock(launch: _Launch, python: str) -> int:
    """Step 3b: writes only in the working folder, reads only what the interpreter needs;
    the Landlock ABI version (0: not asked for)."""
    a = launch.a
    abi = landlock_abi()
    if abi < 1:
        launch.unavailable(
            "Landlock is not available (Linux 5.13 or later with the landlock LSM enabled is needed)"
        )
    proc = "/proc" if a["namespaces"] else "/proc/self"  # resolved now: this pid, kept by exec
    rules = [
        (a["workdir"], ~0),
        ("/dev/null", READ_FILE | WRITE_FILE | TRUNCATE),
        (proc, READ_FILE | READ_DIR),
    ]
    rules += [(d, READ_FILE) for d in DEVICES_READ] + [(d, READ_TREE) for d in SYSTEM_READ]
    rules += interpreter_reads(python, a["prefixes"])
    why = landlock(abi, rules)
    if why:
        launch.unavailable(f"Landlock: {why}")
    launch.applied += ["landlock-fs", "landlock-read"] + (["landlock-tcp"] if abi >= 4 else [])
    if abi >= 6:
        launch.applied.append("landlock-scope")
    return abi


def _apply_seccomp(launch: _Launch, machine: str, netns: bool) -> None:
    """Step 3c: socket() only for IPv4/IPv6 inside an empty network namespace; no io_uring."""
    arch, socket_nr, io_uring_nr, _ = SYSCALLS[machine]
    families = [AF_INET, AF_INET6] if netns else []  # harmless only in an empty namespace
    if not install_seccomp(bpf_program(arch, [io_uring_nr], socket_nr, families, errno.EACCES)):
        launch.unavailable(f"cannot install the seccomp filter: {last_error()}")
    launch.applied.append("seccomp")


def _exec_runner(launch: _Launch, python: str, prelude: bool) -> None:
    """Step 4: the address-space limit, the isolation report, then exec of :data:`RUNNER`."""
    a = launch.a
    argv = [
        python,
        "-I",
        "-c",
        RUNNER + f"\n_lmlab_run({a['nonce_fd']}, {a['result_fd']}, {prelude})\n",
    ]
    resource.setrlimit(resource.RLIMIT_AS, (a["memory"], a["memory"]))
    launch.applied.append("rlimits")
    launch.report({"isolation": launch.applied, "python": python})
    os.close(a["info_fd"])
    try:
        os.execve(python, argv, dict(os.environ))
    except OSError as e:
        os.write(2, f"lmlab sandbox: cannot exec {python}: {e}\n".encode())
        os._exit(126)


def main() -> None:
    launch = _Launch(json.loads(sys.argv[1]))
    a = launch.a
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    machine = os.uname().machine
    if a["seccomp"] and machine not in SYSCALLS:
        launch.unavailable(
            f"no seccomp filter for this machine ({machine}); lmlab knows {', '.join(SYSCALLS)}"
        )
    if a["namespaces"]:
        with open("program.py", "rb") as f:
            program = f.read()  # read before the tmpfs hides the harness's copy
        _unshare(launch)
        _mount_workdir(launch, program)
        _enter_pid_namespace(launch)
    _limit_and_drop_privileges(launch)
    # The first interpreter this uid may execute (a root-only one, e.g. under /root, is skipped).
    python = next((p for p in a["pythons"] if os.access(p, os.X_OK)), a["pythons"][0])
    abi = _apply_landlock(launch, python) if a["landlock"] else 0
    netns = "netns" in launch.applied
    if a["seccomp"]:
        _apply_seccomp(launch, machine, netns)
    prelude = not netns and abi < 4 and not a["seccomp"]
    if prelude:
        launch.applied.append("socket-prelude")  # best effort: _socket stays reachable
    _exec_runner(launch, python, prelude)


if __name__ == "__main__":
    main()
