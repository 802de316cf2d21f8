"""The shim: the process the native runtime starts for each workload.

``python -I -c SHIM_BOOT <runtimes dir> <workdir> -- argv`` in a new session,
so the shim is the process-group leader and nothing ties it to the agent (a
``kill -9`` of the agent leaves it running). It waits until ``proc.json``
names it (a program nobody recorded could never be found again), joins the
cgroups, spawns the program (stdout/stderr straight into the log files),
writes ``child.json``, deletes ``launch.json`` and leaves the cgroups again:
its own memory is not charged to the workload, the OOM killer and the
freezer never pick it, and "kill everything in the cgroup" never kills it, so
it is always there to record how the program ended. When the program ends it
writes ``exit_code`` (a signal death is 128 + signum), kills what the program
left behind, and exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtimes.cgroups import cg_pids, cg_write
from runtimes.native.records import (
    CHILD_FILE,
    EXIT_FILE,
    LAUNCH_FILE,
    PROC_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    now,
    read_json,
    write_json,
)
from runtimes.procs import group_members, signal_name, signal_pids, start_ticks
from specs.fileio import write_atomic
from specs.logfmt import kv

# How long a new shim waits for the agent to write its proc.json.
_SHIM_RECORD_WAIT = 30.0

# The shim's boot line. It registers empty ``runtimes`` and ``runtimes.native``
# packages instead of importing their ``__init__.py``, so the shim loads only
# this module and what it imports (stdlib + psutil): it starts in tens of
# milliseconds and stays small whatever other drivers the package grows.
SHIM_BOOT = (
    "import sys, types; "
    "pkg = types.ModuleType('runtimes'); pkg.__path__ = [sys.argv[1]]; "
    "sys.modules['runtimes'] = pkg; "
    "native = types.ModuleType('runtimes.native'); "
    "native.__path__ = [sys.argv[1] + '/native']; "
    "sys.modules['runtimes.native'] = native; "
    "from runtimes.native.shim import shim_main; sys.exit(shim_main(sys.argv[2]))"
)


def shim_main(workdir: str) -> int:
    """Run one workload's program and record how it ended (the process the agent starts).

    Reads ``launch.json``, joins the cgroups, spawns the program, records
    ``child.json``, leaves the cgroups, relays SIGTERM/SIGINT/SIGHUP to the
    process group, waits, writes ``exit_code`` and kills what the program left
    behind. Its own log lines go to its stderr (``shim.log``).
    """
    wd = Path(workdir)

    def say(event: str, **fields: object) -> None:
        print(f"{now().isoformat()} {kv(event, **fields)}", file=sys.stderr, flush=True)

    me = os.getpid()
    # Run nothing until the agent has recorded us: a program whose shim has no
    # proc.json could never be found, stopped or adopted. An agent that died
    # in between leaves only this shim, which gives up; a proc.json naming
    # another pid belongs to a newer start of the same name.
    deadline = time.monotonic() + _SHIM_RECORD_WAIT
    while (record := read_json(wd / PROC_FILE)) is None or record.get("pid") != me:
        if record is not None or time.monotonic() > deadline:
            say("shim.not_recorded", path=wd / PROC_FILE, action="exit without running")
            return 2
        time.sleep(0.01)
    spec = read_json(wd / LAUNCH_FILE)
    if spec is None:
        say("shim.no_launch_file", path=wd / LAUNCH_FILE)
        return 2
    running: dict[str, subprocess.Popen[bytes]] = {}
    pending: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        # The group gets the signal exactly once: our own copy is ignored, so a
        # signal sent to the shim or to the whole group reaches each process once.
        if "child" not in running:
            pending.append(signum)
        signal.signal(signum, signal.SIG_IGN)
        try:
            os.killpg(me, signum)
        finally:
            signal.signal(signum, relay)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, relay)

    def join(key: str) -> None:
        for path in spec.get(key, []):
            try:
                cg_write(Path(path), str(me))
            except OSError as exc:
                say("shim.cgroup_move_failed", path=path, error=exc)

    argv: list[str] = spec["argv"]
    code: int
    with open(wd / STDOUT_FILE, "ab") as out, open(wd / STDERR_FILE, "ab") as err:
        join("cgroup_procs")
        try:
            if pending:
                raise InterruptedError
            running["child"] = subprocess.Popen(
                argv,
                executable=spec["executable"],
                cwd=spec["cwd"],
                env=spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
            )
        except InterruptedError:
            code = 128 + pending[0]
            say("shim.cancelled", signal=signal_name(pending[0]))
        except OSError as exc:
            err.write(f"gu: cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            say("shim.exec_failed", argv0=argv[0], error=exc, exit_code=code)
        finally:
            join("leave_procs")
    child = running.get("child")
    if child is not None and pending:
        # A signal that came before the program existed must still reach it
        # (a second copy, in the instant around fork, is the lesser evil).
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, pending[0])
    if child is not None:
        write_json(wd / CHILD_FILE, {"pid": child.pid, "start_ticks": start_ticks(child.pid) or 0})
        say("shim.started", pid=child.pid, argv0=argv[0])
    with contextlib.suppress(OSError):
        (wd / LAUNCH_FILE).unlink()
    if child is not None:
        rc = child.wait()
        code = 128 - rc if rc < 0 else rc
    write_atomic(wd / EXIT_FILE, f"{code}\n".encode(), mode=0o644)
    say("shim.exited", exit_code=code)
    # Nothing may outlive the program: background children left in the group or cgroup.
    leftovers = set(group_members(me)) | {
        pid for d in spec.get("cgroup_dirs", []) for pid in cg_pids(Path(d))
    }
    leftovers.discard(me)
    if leftovers:
        say("shim.kill_leftovers", pids=",".join(map(str, sorted(leftovers))))
        signal_pids(leftovers, signal.SIGKILL)
    return 0
