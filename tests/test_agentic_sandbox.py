"""The checker sandbox: every escape a model-written checker might try is stopped and reported."""

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from rm_exps.agentic import sandbox
from rm_exps.agentic.sandbox import (
    DEFAULT_MODULES,
    SandboxLimits,
    SandboxUnavailable,
    run_checker,
    sandbox_status,
    source_problems,
)

# Every test runs checkers, so every test needs bubblewrap (CI installs it: .ci/run).
BWRAP, WHY_NOT = sandbox_status()
pytestmark = pytest.mark.skipif(BWRAP is None, reason=f"no usable sandbox: {WHY_NOT}")

# os/socket/io/subprocess are importable here so the OS-level layers, not the import guard, are tested.
OPEN = SandboxLimits(timeout=3.0, cpu_seconds=3, modules=DEFAULT_MODULES + ("os", "socket", "io", "subprocess"))


def checker(body: str, imports: str = "") -> str:
    return f"{imports}\ndef check_following(response):\n" + "".join(f"    {line}\n" for line in body.splitlines())


def test_a_correct_checker_runs_on_every_input_in_one_process():
    run = run_checker(checker("return len(response.split()) >= 3", "import re"), ["a b c", "a", "x y z w"])
    assert [o.passed for o in run.outcomes] == [True, False, True]
    assert all(o.error is None for o in run.outcomes)
    assert run.processes == 1


def test_non_bool_results_and_exceptions_fail_with_a_reason():
    run = run_checker(checker("if response == 'boom':\n    raise ValueError('bad')\nreturn 1"), ["x", "boom"])
    assert [o.passed for o in run.outcomes] == [False, False]
    assert "returned int, not bool" in run.outcomes[0].error
    assert "ValueError: bad" in run.outcomes[1].error


def test_missing_function_is_reported():
    run = run_checker("x = 1\n", ["a"])
    assert run.outcomes[0].error == "the code does not define check_following"


def test_infinite_loop_is_killed_and_only_its_input_fails():
    started = time.monotonic()
    run = run_checker(
        checker("while response == 'loop':\n    pass\nreturn True"),
        ["ok", "loop", "ok"],
        SandboxLimits(timeout=1.0, cpu_seconds=1),
    )
    assert time.monotonic() - started < 6
    assert [o.passed for o in run.outcomes] == [True, False, True]
    assert "timed out" in run.outcomes[1].error or "CPU time" in run.outcomes[1].error
    assert run.processes == 2  # the rest ran in a fresh process


def test_memory_bomb_is_stopped():
    run = run_checker(
        checker("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))"), ["x"], SandboxLimits(memory_mb=256)
    )
    assert not run.outcomes[0].passed and "MemoryError" in run.outcomes[0].error


def test_fork_and_subprocess_are_refused():
    fork = run_checker(checker("while True:\n    os.fork()", "import os"), ["x"], OPEN)
    spawn = run_checker(checker("subprocess.run(['true'])\nreturn True", "import subprocess"), ["x"], OPEN)
    assert "os.fork is not allowed" in fork.outcomes[0].error
    assert "subprocess.Popen is not allowed" in spawn.outcomes[0].error


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("RM_TEST_SECRET", "hunter2")
    run = run_checker(checker("raise ValueError(repr(dict(os.environ)))", "import os"), ["x"], OPEN)
    assert "ValueError" in run.outcomes[0].error
    assert "hunter2" not in run.outcomes[0].error and "RM_TEST_SECRET" not in run.outcomes[0].error


def test_writing_files_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    os.chmod(tmp_path, 0o777)
    run = run_checker(checker(f"io.open({str(target)!r}, 'w').write('x')\nreturn True", "import io"), ["x"], OPEN)
    assert not run.outcomes[0].passed and "open is not allowed" in run.outcomes[0].error
    assert not target.exists()
    builtin_open = run_checker(checker(f"open({str(target)!r}, 'w')\nreturn True"), ["x"])
    assert "NameError" in builtin_open.outcomes[0].error and not target.exists()


def test_sockets_are_refused():
    run = run_checker(checker("socket.socket().connect(('127.0.0.1', 9))\nreturn True", "import socket"), ["x"], OPEN)
    assert "socket.__new__ is not allowed" in run.outcomes[0].error


def test_modules_outside_the_allow_list_cannot_be_imported():
    run = run_checker(checker("import urllib.request\nreturn True"), ["x"])
    assert "import of 'urllib.request' is not allowed" in run.outcomes[0].error


def test_the_process_runs_unprivileged_and_offline():
    run = run_checker(checker("return True"), ["x"])
    if os.geteuid() == 0:
        assert run.uids == {65534}  # root is dropped to nobody
    if not run.network_isolated:
        pytest.skip("this kernel refuses network namespaces; only the audit hook blocks sockets here")
    assert run.network_isolated is True


def test_static_policy_refuses_escape_hatches_before_any_process():
    escape = checker("return ().__class__.__base__.__subclasses__() != []")
    assert run_checker(escape, ["x"]).outcomes[0].passed  # the runtime guard alone does not stop this one...
    assert "attribute '__class__' is not allowed" in source_problems(escape)  # ...the static policy does
    assert source_problems(checker("return eval('1') == 1")) == ["name 'eval' is not allowed"]
    assert source_problems(checker("return True", "from . import x")) == ["relative imports are not allowed"]
    assert source_problems("def other(r):\n    return True\n") == [
        "the code does not define check_following at top level"
    ]
    assert source_problems(checker("return re.match('a', response) is not None", "import re")) == []


# ----------------------------------------------------------------------------- a hostile checker with full Python
# The in-process hook is switched off with code that passes the static policy; what stops these attacks
# is bubblewrap (namespaces, read-only minimal filesystem), the wall-clock kill and the output cap.
HOOK_OFF = (
    "import collections\nS = collections._sys\nS.modules['__main__'].DENIED_EVENT_PREFIXES = ()\nos = S.modules['os']\n"
)


def hostile(body: str) -> str:
    code = HOOK_OFF + checker(body)
    assert source_problems(code) == []  # the static policy lets it through: only the sandbox is left
    return code


def test_the_hook_really_is_off_but_host_files_cannot_be_written(tmp_path):
    os.chmod(tmp_path, 0o777)
    target = tmp_path / f"pwned-{uuid.uuid4().hex}"
    run = run_checker(
        hostile(
            f"os.system('/usr/bin/id > {target}')\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nreturn True"
        ),
        ["x"],
    )
    assert not run.outcomes[0].passed and "FileNotFoundError" in run.outcomes[0].error  # no such folder inside
    assert not target.exists()
    proof = run_checker(hostile("os.system('/usr/bin/id > /tmp/ok')\nreturn os.path.getsize('/tmp/ok') > 0"), ["x"])
    assert proof.outcomes[0].passed and proof.contained  # the hook was off: the shell ran (in its tmpfs)


def test_only_a_small_tmpfs_is_writable():
    import sys as host

    site = os.path.join(
        os.path.realpath(host.base_prefix),
        "lib",
        f"python{host.version_info[0]}.{host.version_info[1]}",
        "site-packages",
    )
    places = [
        "/x",
        "/dev/x",
        "/dev/shm/x",
        "/usr/x",
        "/sandbox/x",
        os.path.join(site, "x"),
        os.path.join(os.path.realpath(host.base_prefix), "x"),
    ]
    body = (
        f"writable = []\nfor p in {places!r}:\n    try:\n        os.close(os.open(p, os.O_CREAT | os.O_WRONLY))\n"
        "        writable.append(p)\n    except OSError:\n        pass\n"
        "os.write(os.open('/dev/null', os.O_WRONLY), b'x')\n"
        "fd = os.open('/tmp/big', os.O_CREAT | os.O_WRONLY)\n"
        "try:\n    for i in range(40):\n        os.close(os.open('/tmp/f%d' % i, os.O_CREAT | os.O_WRONLY))\n"
        "        os.write(os.open('/tmp/f%d' % i, os.O_WRONLY), b'x' * 60000)\nexcept OSError as e:\n"
        "    full = e.errno\nraise ValueError('writable=' + repr(writable) + ' full=' + repr(full))"
    )
    error = run_checker(hostile(body), ["x"], SandboxLimits(max_open_files=64)).outcomes[0].error
    assert "writable=[] " in error and "full=28" in error  # ENOSPC: /tmp holds 1 MiB


def test_private_host_files_and_processes_are_not_visible(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    os.chmod(secret, 0o644)
    home = os.path.expanduser("~")
    prefix = os.path.realpath(sys.base_prefix) + "/"
    # everything in the home folder but the path down to the interpreter (e.g. ~/.pyenv when Python is there)
    in_home = [os.path.join(home, n) for n in os.listdir(home) if not prefix.startswith(os.path.join(home, n) + "/")]
    paths = [
        str(secret),
        str(tmp_path),
        *in_home,
        str(Path(__file__).resolve()),
        "/etc/passwd",
        "/etc/shadow",
        f"/proc/{os.getpid()}",
        os.getcwd(),
    ]
    body = (
        f"seen = [p for p in {paths!r} if os.path.exists(p)]\n"
        "own = os.read(os.open('/sandbox/child.py', os.O_RDONLY), 100)\n"  # opens do work: the hook is off
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "raise ValueError('seen=' + repr(seen) + ' pids=' + repr(len(pids)) + ' own=' + repr(len(own)))"
    )
    error = run_checker(hostile(body), ["x"]).outcomes[0].error
    assert "seen=[] " in error and "own=100" in error
    assert int(error.split("pids=")[1].split()[0]) <= 3  # its own pid namespace: bwrap's init and itself


def test_the_network_is_unreachable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        limits = SandboxLimits(modules=DEFAULT_MODULES + ("socket",))
        code = HOOK_OFF.replace("os = ", "import socket\nos = ") + checker(
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1)\nreturn True"
        )
        run = run_checker(code, ["x"], limits)
        assert not run.outcomes[0].passed and "Error" in run.outcomes[0].error
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the listening socket
        assert run.network_isolated is True
    finally:
        server.close()


def test_the_parent_cannot_be_signalled():
    run = run_checker(hostile(f"os.kill({os.getpid()}, 0)\nreturn True"), ["x"])
    assert not run.outcomes[0].passed and "ProcessLookupError" in run.outcomes[0].error


def test_a_detached_grandchild_dies_with_the_wall_limit():
    marker = f"{30 + uuid.uuid4().int % 1000 / 10000:.4f}"
    body = f"if os.fork() == 0:\n    os.setsid()\n    os.system('sleep {marker}')\n    os._exit(0)\nreturn True"
    hang = (
        f"if os.fork() == 0:\n    os.setsid()\n    os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n"
        "while True:\n    pass"
    )
    for code in (hostile(body), hostile(hang)):
        started = time.monotonic()
        run = run_checker(code, ["x"], SandboxLimits(timeout=2.0, cpu_seconds=10))
        assert time.monotonic() - started < 3.0
        assert run.outcomes[0].passed or "timed out" in run.outcomes[0].error
    psutil = pytest.importorskip("psutil")
    time.sleep(0.2)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert left == []


def test_output_is_capped_and_the_parent_does_not_grow():
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    before = me.memory_info().rss
    started = time.monotonic()
    run = run_checker(
        hostile("chunk = b'x' * 2**20\nfor _ in range(200):\n    os.write(1, chunk)\nreturn True"), ["x", "y"]
    )
    assert me.memory_info().rss - before < 100 * 2**20
    assert time.monotonic() - started < 6
    assert not run.outcomes[0].passed and "more than 1048576 bytes to stdout" in run.outcomes[0].error
    err = run_checker(hostile("chunk = b'x' * 2**20\nfor _ in range(200):\n    os.write(2, chunk)\nreturn True"), ["x"])
    assert "more than 1048576 bytes to stderr" in err.outcomes[0].error
    assert me.memory_info().rss - before < 100 * 2**20


# ----------------------------------------------------------------------------- no bubblewrap: refuse, unless opted out


def test_without_bubblewrap_checkers_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        run_checker(checker("return True"), ["x"])
    run = run_checker(checker("return True"), ["x"], SandboxLimits(allow_unsandboxed=True))  # explicit, unsafe
    assert run.outcomes[0].passed and not run.contained


def test_refused_when_namespaces_cannot_be_created(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe", lambda bwrap, python: "bwrap cannot create the sandbox namespaces here")
    with pytest.raises(SandboxUnavailable, match="namespaces"):
        run_checker(checker("return True"), ["x"])


def test_the_instruction_following_verifier_reports_that_it_cannot_run(monkeypatch, tmp_path):
    from rm_exps.agentic.constraints import InstructionFollowingVerifier

    monkeypatch.setenv("PATH", str(tmp_path))
    signal = InstructionFollowingVerifier(analyzer=None, coder=None).score("Answer in lowercase.", ["a", "b"])
    assert signal.scores == [None, None] and "bubblewrap" in signal.errors[0]


def test_the_unsandboxed_fallback_still_has_the_wall_limit_and_output_cap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    limits = SandboxLimits(timeout=1.0, cpu_seconds=5, allow_unsandboxed=True)
    started = time.monotonic()
    run = run_checker(checker("while True:\n    pass"), ["x"], limits)
    assert time.monotonic() - started < 2.0 and "timed out" in run.outcomes[0].error
    big = run_checker(hostile("os.write(1, b'x' * 3 * 2**20)\nreturn True"), ["x"], limits)
    assert "more than" in big.outcomes[0].error


def test_the_cpu_limit_is_reported_through_bwrap():
    run = run_checker(checker("while True:\n    pass"), ["x"], SandboxLimits(timeout=5.0, cpu_seconds=1))
    assert run.outcomes[0].error == "sandbox process CPU time limit exceeded"


NOBODY_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from rm_exps.agentic.sandbox import SandboxLimits, run_checker
pre = {pre!r} + "def check_following(r):\\n"
out = {{"secret": run_checker(pre + "    return os.path.exists({secret!r})\\n", ["x"]).outcomes[0].passed,
       "kill": run_checker(pre + "    os.kill(%d, 0)\\n    return True\\n" % os.getpid(), ["x"]).outcomes[0].error}}
started = time.monotonic()
run_checker(pre + "    if os.fork() == 0:\\n        os.setsid()\\n        os.system('sleep 30')\\n"
            "    while True:\\n        pass\\n", ["x"], SandboxLimits(timeout=2.0, cpu_seconds=10))
out["seconds"] = time.monotonic() - started
print(json.dumps(out))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3") or not os.path.exists("/usr/bin/su"),
    reason="runs the service as user nobody: needs root, su and a system python3",
)
def test_a_service_running_as_nobody_keeps_its_files_and_process(tmp_path):
    import shutil
    import subprocess
    import tempfile

    repo = str(Path(__file__).resolve().parents[1])
    if subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", f"test -r {repo}/rm_exps/agentic/sandbox.py"]).returncode:
        pytest.skip("nobody cannot read the repository")
    folder = tempfile.mkdtemp(prefix="rm_exps_nobody_")  # tmp_path is private to root
    try:
        os.chmod(folder, 0o755)
        secret = os.path.join(folder, "secret")
        Path(secret).write_text("private")
        os.chown(secret, 65534, 65534)
        os.chmod(secret, 0o600)
        script = os.path.join(folder, "attack.py")
        Path(script).write_text(NOBODY_SCRIPT.format(repo=repo, pre=HOOK_OFF, secret=secret))
        os.chmod(script, 0o644)
        done = subprocess.run(
            ["su", "nobody", "-s", "/bin/sh", "-c", f"cd / && /usr/bin/python3 {script}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["secret"] is False and "ProcessLookupError" in out["kill"] and out["seconds"] < 3.0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
