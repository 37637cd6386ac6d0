"""The child process of a launched run: `python -m rm_exps.worker <run_dir>/launch_spec.json`.

Started by rm_exps.launch, directly or under `accelerate launch`; runs exactly the spec the
parent validated and exits 0 (completed or diverged) or 1 (failed).
"""

from __future__ import annotations

import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does: logged as interrupted, no summary, checkpoints kept."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}: the launching process ended or the job was stopped")


def main(argv: list[str] | None = None) -> int:
    from rm_exps.distributed import shutdown
    from rm_exps.launch import read_spec
    from rm_exps.logs import log_to_console
    from rm_exps.run import execute_run

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m rm_exps.worker RUN_DIR/launch_spec.json", file=sys.stderr)
        return 2
    log_to_console()
    signal.signal(signal.SIGTERM, _interrupted)  # the parent died (PR_SET_PDEATHSIG) or a scheduler stops us
    try:
        summary = execute_run(read_spec(argv[0]))
    finally:
        shutdown()
    return 1 if summary["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
