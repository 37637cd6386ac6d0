"""Run model-written checker code in a separate, contained process (the reference ran it unsandboxed).

`run_checker(code, inputs, limits)` runs `check_following(text) -> bool` on every input in a fresh
`python -I -S -B` process (`_sandbox_child.py`). The boundary is the kernel, not Python: the process
runs inside bubblewrap (`bwrap`, Debian package `bubblewrap`) with
* new user, mount, pid, network, ipc, uts and cgroup namespaces: uid/gid 65534 (nobody) inside, no
  capabilities, no network interface but loopback of its own, it sees only its own processes and
  a fresh /proc of that pid namespace, and cannot signal anything outside;
* a read-only filesystem made only of /usr, the /bin, /lib* links of the host, the interpreter's
  prefix (its site-packages hidden) and the child script; no /etc, no home directory, no repository;
  bwrap's root and /dev are remounted read-only, so the only writable place is a 1 MiB tmpfs at
  /tmp (its working directory);
* `--die-with-parent`, `--new-session` (no terminal injection), `--clearenv` (only LC_ALL is set);
* resource limits set by the child on itself before any job code runs (CPU seconds, address space,
  file size, open files, processes, no core dumps);
* a wall-clock limit: when it passes, bwrap is killed, which kills the pid namespace's init and so
  every process the job started (setsid() or double fork included); the call returns within
  about `timeout` + 1 s whatever the job does;
* stdout and stderr read incrementally with a cap (`OUTPUT_CAP` bytes each): a process that writes
  more is killed, so the parent's memory does not grow with the job's output.
Inside, an audit hook and guarded builtins refuse file opens, imports, sockets, os/subprocess calls
(a convenience that turns most attempts into clear errors; code that switches it off still meets
the namespaces).

Where bwrap is missing or cannot create the namespaces (probed once per bwrap/interpreter), the
call raises `SandboxUnavailable` naming the `bubblewrap` package, unless `limits.allow_unsandboxed`
(config `sandbox.allow_unsandboxed`, unsafe) is set: then the child runs as a plain process with
only the audit hook, rlimits, a network namespace when the kernel allows one, root dropped to
nobody, the process-group kill and the same output cap and wall limit (a job that calls setsid()
can outlive it there).

What it does not guarantee: the kernel itself (namespace or syscall bugs: there is no seccomp
filter), RLIMIT_NPROC when the service runs as host root (the kernel exempts root's processes;
a fork bomb lasts until the wall limit), CPU/memory pressure on the host within the limits. A
checker can always lie about its own verdict (it returns a bool), but it cannot see or change
other checkers' results: each checker gets its own process.

If a process dies (timeout, CPU or memory limit, crash, output cap) the input it was on fails with
the reason and the remaining inputs run in a new process, so one bad input costs one timeout.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHILD = Path(__file__).with_name("_sandbox_child.py")
DEFAULT_MODULES = ("re", "string", "math", "json", "collections", "unicodedata", "itertools", "functools", "statistics")
SANDBOX_ENV = {"LC_ALL": "C.UTF-8"}  # nothing inherited: no API keys, no HOME, no PATH
OUTPUT_CAP = 2**20  # bytes of stdout and of stderr read from one sandbox process; more: it is killed
KILL_GRACE = 0.5  # seconds to collect what a killed process had written
NOBODY = 65534
SIGNALS = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGKILL: "killed",
    signal.SIGSEGV: "crashed (SIGSEGV)",
    signal.SIGXFSZ: "file size limit exceeded",
}


# Names and attributes a checker never needs, refused before it is run (the child refuses them too).
DENIED_NAMES = {
    "eval",
    "exec",
    "compile",
    "open",
    "__import__",
    "globals",
    "locals",
    "vars",
    "getattr",
    "setattr",
    "delattr",
    "breakpoint",
    "input",
    "exit",
    "quit",
    "help",
    "memoryview",
    "__builtins__",
}


def source_problems(code: str, modules: tuple[str, ...] = DEFAULT_MODULES) -> list[str]:
    """Static policy for checker code, checked before any process starts: it parses, defines
    check_following, imports only `modules`, and uses no dunder attribute or escape-hatch name
    (the usual ways out of a restricted namespace, e.g. ().__class__.__subclasses__())."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return [f"SyntaxError: {e.msg} (line {e.lineno})"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.level:
                problems.append("relative imports are not allowed")
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            problems += [
                f"import of '{n}' is not allowed (allowed: {', '.join(modules)})"
                for n in names
                if n.split(".")[0] not in modules
            ]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            problems.append(f"attribute '{node.attr}' is not allowed")
        elif isinstance(node, ast.Name) and node.id in DENIED_NAMES:
            problems.append(f"name '{node.id}' is not allowed")
    if not any(isinstance(n, ast.FunctionDef) and n.name == "check_following" for n in tree.body):
        problems.append("the code does not define check_following at top level")
    return list(dict.fromkeys(problems))


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not a failure of the checked code)."""


class SandboxUnavailable(SandboxError):
    """bubblewrap is missing or cannot create its namespaces, and unsandboxed runs are not allowed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandbox process (which runs one checker on a list of inputs)."""

    timeout: float = 5.0  # wall-clock seconds per process
    cpu_seconds: int = 5
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_size_kb: int = 64  # largest file it may write (only /tmp, a 1 MiB tmpfs, is writable)
    max_open_files: int = 32
    max_processes: int = 64  # RLIMIT_NPROC (forks are also refused by the hook)
    modules: tuple[str, ...] = DEFAULT_MODULES  # the only modules the code may import
    allow_unsandboxed: bool = False  # UNSAFE: run without bubblewrap when it is unavailable

    def rlimits(self) -> list[tuple[int, tuple[int, int]]]:
        cpu = max(1, int(self.cpu_seconds))
        return [
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),
            (resource.RLIMIT_AS, (self.memory_mb * 2**20,) * 2),
            (resource.RLIMIT_FSIZE, (self.file_size_kb * 1024,) * 2),
            (resource.RLIMIT_NOFILE, (self.max_open_files,) * 2),
            (resource.RLIMIT_NPROC, (self.max_processes,) * 2),
            (resource.RLIMIT_CORE, (0, 0)),
        ]


@dataclass
class CheckOutcome:
    """One input's verdict: passed only when check_following returned True."""

    passed: bool
    error: str | None = None


@dataclass
class SandboxRun:
    outcomes: list[CheckOutcome]
    processes: int = 0
    network_isolated: bool | None = None  # None: no process got far enough to say
    uids: set[int] = field(default_factory=set)
    contained: bool = True  # False: ran without bubblewrap (limits.allow_unsandboxed)


# ----------------------------------------------------------------------------- bubblewrap


def interpreter() -> str:
    """The real interpreter binary (a virtual environment's python is a link to it)."""
    return os.path.realpath(sys.executable)


def _visible_paths() -> list[str]:
    """Host folders the sandbox sees read-only: /usr and the interpreter's installation."""
    paths = ["/usr"]
    for path in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(interpreter()))):
        path = os.path.realpath(path)
        if path != "/" and not any(path == p or path.startswith(p + "/") for p in paths):
            paths.append(path)
    return paths


def bwrap_command(bwrap: str, program: list[str]) -> list[str]:
    """The bwrap command line that runs `program` contained (see the module docstring)."""
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        *[a for k, v in SANDBOX_ENV.items() for a in ("--setenv", k, v)],
    ]
    for path in _visible_paths():
        args += ["--ro-bind", path, path]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top) and top not in _visible_paths():
            args += ["--ro-bind", top, top]
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for prefix in {sys.base_prefix, sys.base_exec_prefix}:
        site = os.path.join(os.path.realpath(prefix), "lib", ver, "site-packages")
        if os.path.isdir(site):  # installed packages (and anything put there) stay out of sight
            args += ["--tmpfs", site, "--remount-ro", site]
    # bwrap's own root and /dev are writable tmpfs without a size limit: made read-only, so the
    # 1 MiB /tmp is the only writable place (device nodes such as /dev/null still work)
    args += [
        "--ro-bind",
        str(CHILD),
        "/sandbox/child.py",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--remount-ro",
        "/dev",
        "--size",
        str(2**20),
        "--tmpfs",
        "/tmp",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
    ]
    return args + ["--", *program]


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str, python: str) -> str | None:
    """None when bwrap runs the interpreter in its namespaces here, else why not (probed once)."""
    try:
        done = subprocess.run(
            bwrap_command(bwrap, [python, "-I", "-S", "-B", "-c", "import os; print(os.getuid())"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            env=SANDBOX_ENV,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{bwrap} could not be run: {e}"
    if done.returncode != 0 or done.stdout.strip() != str(NOBODY).encode():
        return (
            f"{bwrap} cannot create the sandbox namespaces here (exit status {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-300:]}); unprivileged user namespaces may be disabled"
        )
    return None


def sandbox_status() -> tuple[str | None, str | None]:
    """(bwrap path, None) when checkers can run contained, else (None, why not)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, "bubblewrap (bwrap) is not installed or not on PATH; install the 'bubblewrap' package"
    problem = _probe(bwrap, interpreter())
    return (None, problem) if problem else (bwrap, None)


# ----------------------------------------------------------------------------- running checkers


def run_checker(code: str, inputs: list[str], limits: SandboxLimits = SandboxLimits()) -> SandboxRun:
    """`check_following` of `code` on every input, each outcome index-aligned with `inputs`.
    Raises SandboxUnavailable when bubblewrap cannot be used and limits.allow_unsandboxed is off."""
    bwrap, problem = sandbox_status()
    if bwrap is None and not limits.allow_unsandboxed:
        raise SandboxUnavailable(
            f"refusing to run checker code without the sandbox: {problem} "
            "(or set sandbox.allow_unsandboxed, which is unsafe for untrusted code)"
        )
    run = SandboxRun(outcomes=[], contained=bwrap is not None)
    while len(run.outcomes) < len(inputs):
        lines, failure = _one_process(code, inputs[len(run.outcomes) :], limits, bwrap)
        run.processes += 1
        if lines and isinstance(lines[0], dict) and "network_isolated" in lines[0]:
            header = lines.pop(0)
            isolated = True if bwrap else bool(header["network_isolated"])
            run.network_isolated = isolated if run.network_isolated is None else (run.network_isolated and isolated)
            run.uids.add(header["uid"])
        for line in lines[: len(inputs) - len(run.outcomes)]:
            if isinstance(line, dict) and isinstance(line.get("value"), bool):
                run.outcomes.append(CheckOutcome(line["value"]))
            else:
                run.outcomes.append(CheckOutcome(False, str(line.get("error") if isinstance(line, dict) else line)))
        if len(run.outcomes) < len(inputs):  # the process stopped early: blame the input it was on
            run.outcomes.append(CheckOutcome(False, failure or "the sandbox process stopped without a result"))
    return run


def _one_process(code: str, inputs: list[str], limits: SandboxLimits, bwrap: str | None) -> tuple[list, str | None]:
    """(parsed output lines, failure reason or None) of one sandbox process over `inputs`."""
    job = json.dumps(
        {
            "code": code,
            "inputs": inputs,
            "modules": list(limits.modules),
            "rlimits": [[which, *value] for which, value in limits.rlimits()],
        }
    ).encode()
    with tempfile.TemporaryDirectory(prefix="rm_exps_sandbox_") as cwd:
        if bwrap:
            command, cwd = bwrap_command(bwrap, [interpreter(), "-I", "-S", "-B", "/sandbox/child.py"]), "/"
        else:
            command = [sys.executable, "-I", "-S", "-B", str(CHILD)]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=SANDBOX_ENV,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise SandboxError(f"cannot start the sandbox process: {e}") from e
        try:
            if not bwrap:  # the child sets them on itself too; here they also cover its start-up
                for which, value in limits.rlimits():
                    resource.prlimit(proc.pid, which, value)
            out, err, failure = _exchange(proc, job, started + limits.timeout, limits.timeout)
        finally:
            _kill(proc)  # bwrap: its death kills the pid namespace; else the process group
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    if failure is None and proc.returncode not in (0, None):
        code = proc.returncode
        if bwrap and 128 < code < 128 + 65:  # bwrap exits with 128 + the signal that killed the job
            code = 128 - code
        reason = SIGNALS.get(-code, f"signal {-code}") if code < 0 else f"exit status {code}"
        failure = f"sandbox process {reason}" + (f": {err.decode(errors='replace')[-300:]}" if err.strip() else "")
    lines = []
    for raw in out.decode("utf-8", errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            lines.append({"error": f"unreadable sandbox output {raw[:100]!r}"})
    return lines, failure


def _exchange(proc: subprocess.Popen, job: bytes, deadline: float, timeout: float) -> tuple[bytes, bytes, str | None]:
    """Send the job and read stdout/stderr until both close, the deadline passes or a cap is hit;
    never blocks past the deadline (+ KILL_GRACE after a kill)."""
    stdin, stdout = proc.stdin.fileno(), proc.stdout.fileno()
    buffers = {stdout: bytearray(), proc.stderr.fileno(): bytearray()}
    failure, sent = None, 0
    with selectors.DefaultSelector() as selector:
        os.set_blocking(stdin, False)
        selector.register(stdin, selectors.EVENT_WRITE)
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while any(key.fd in buffers for key in selector.get_map().values()):
            left = deadline - time.monotonic()
            if left <= 0:
                if failure is None:
                    failure = f"timed out after {timeout:g}s"
                    _kill(proc)
                    deadline = time.monotonic() + KILL_GRACE  # collect what it wrote before it died
                    continue
                break
            for key, _ in selector.select(timeout=left):
                if key.fd == stdin:
                    try:
                        sent += os.write(key.fd, job[sent : sent + 65536])
                    except (BrokenPipeError, OSError):
                        sent = len(job)
                    if sent >= len(job):
                        selector.unregister(key.fd)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                buffer += data[: OUTPUT_CAP + 1 - len(buffer)]
                if len(buffer) > OUTPUT_CAP and failure is None:
                    which = "stdout" if key.fd == stdout else "stderr"
                    failure = f"sandbox process wrote more than {OUTPUT_CAP} bytes to {which}"
                    _kill(proc)
                    deadline = min(deadline, time.monotonic() + KILL_GRACE)
    if failure is None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 0.1)
        except subprocess.TimeoutExpired:
            failure = f"timed out after {timeout:g}s"
    out = bytes(buffers[stdout])
    if failure and "more than" in failure and "stdout" in failure:
        out = out[: out.rfind(b"\n") + 1]  # complete lines only
    return out, bytes(buffers[proc.stderr.fileno()]), failure


def _kill(proc: subprocess.Popen) -> None:
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), lambda: proc.kill()):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
