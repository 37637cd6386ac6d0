"""The program inside a sandbox process (see sandbox.py). Standard library only: it runs under
`python -I -S -B`, without site-packages and without the project on sys.path.

Normally runs inside bubblewrap (the kernel boundary: namespaces, read-only minimal filesystem);
everything here is defence in depth. Reads one JSON job {"code", "inputs", "modules", "rlimits"}
from stdin, then, before any job code runs: sets the resource limits on itself, imports the allowed
modules, moves into a new network namespace (no usable interface), drops root
to nobody, hides stdout/stderr, and installs an audit hook that refuses file opens, new
imports, os/subprocess/socket/ctypes calls and introspection escapes. It then defines the job's
`check_following` and writes one JSON line per input to the saved stdout: {"value": bool} or
{"error": "..."}.
"""

import ctypes
import io
import json
import os
import resource
import sys

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
NOBODY = 65534
DENIED_EVENT_PREFIXES = (
    "open",
    "import",
    "os.",
    "subprocess.",
    "socket",
    "ctypes.",
    "shutil.",
    "pty.",
    "mmap.",
    "fcntl.",
    "resource.",
    "signal.",
    "syslog.",
    "sqlite3.",
    "urllib.",
    "http.",
    "ftplib.",
    "smtplib.",
    "poplib.",
    "imaplib.",
    "nntplib.",
    "telnetlib.",
    "webbrowser.",
    "marshal.",
    "pickle.",
    "code.__new__",
    "function.__new__",
    "object.__getattr__",
    "object.__setattr__",
    "object.__delattr__",
    "gc.",
    "sys._getframe",
    "sys._current_frames",
    "sys.settrace",
    "sys.setprofile",
    "sys.addaudithook",
    "builtins.input",
    "builtins.breakpoint",
    "cpython.run_",
    "_posixsubprocess.",
)
DENIED_BUILTINS = (
    "open",
    "eval",
    "exec",
    "compile",
    "input",
    "breakpoint",
    "help",
    "exit",
    "quit",
    "globals",
    "locals",
    "vars",
    "memoryview",
    "__loader__",
    "__spec__",
)


def isolate_network() -> bool:
    """A fresh network namespace (root: directly; otherwise inside a new user namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    return libc.unshare(flags) == 0


def drop_root() -> None:
    """Root ignores RLIMIT_NPROC and file permissions: run the job as nobody instead."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def audit(event: str, args: tuple) -> None:
    if event.startswith(DENIED_EVENT_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def main() -> None:
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    for which, soft, hard in job.get("rlimits", ()):
        resource.setrlimit(which, (soft, hard))
    allowed = set(job["modules"])
    for name in allowed:  # while the interpreter's files are still readable (they may not be to nobody)
        __import__(name)
    network_isolated = isolate_network()
    drop_root()
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout = sys.stderr = io.StringIO()
    real_import = __import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name.split(".")[0] not in allowed:
            raise ImportError(f"sandbox: import of {name!r} is not allowed")
        return real_import(name, globals, locals, fromlist, level)

    import builtins

    safe = {k: v for k, v in vars(builtins).items() if k not in DENIED_BUILTINS}
    safe["__import__"] = guarded_import
    code = compile(job["code"], "<checker>", "exec")
    results.write(json.dumps({"network_isolated": network_isolated, "uid": os.getuid()}) + "\n")
    results.flush()
    sys.addaudithook(audit)
    namespace = {"__builtins__": safe, "__name__": "checker"}
    try:
        exec(code, namespace)
        check = namespace["check_following"]
        setup_error = None if callable(check) else "check_following is not a function"
    except BaseException as e:  # noqa: BLE001 - any failure of untrusted code is a result
        setup_error = describe(e) if not isinstance(e, KeyError) else "the code does not define check_following"
    for text in job["inputs"]:
        if setup_error:
            line = {"error": setup_error}
        else:
            try:
                value = check(text)
                line = (
                    {"value": value}
                    if isinstance(value, bool)
                    else {"error": f"check_following returned {type(value).__name__}, not bool"}
                )
            except BaseException as e:  # noqa: BLE001
                line = {"error": describe(e)}
        results.write(json.dumps(line) + "\n")
        results.flush()


if __name__ == "__main__":
    main()
