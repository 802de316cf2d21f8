"""The native runtime: a program folder from a ``.tar.gz``, run as plain processes.

Flow of one workload named ``N`` (everything lives in ``state_dir/N/``):

1. ``start`` unpacks the image into ``root/`` (tarfile's ``data`` filter plus
   our own checks: no absolute names, no ``..``, no devices, no links out),
   resolves the command (``./run.sh`` and ``bin/prog`` inside ``root``), creates
   the workload's cgroups and writes ``launch.json`` (argv, env, cwd, cgroups).
2. It starts the **shim** — ``python -I -c <boot> <runtimes dir> <workdir> -- argv``
   — in a new session, so the shim is the process-group leader and nothing
   ties it to the agent: a ``kill -9`` of the agent leaves it running. The
   agent records the shim's pid, pgid and start time in ``proc.json``
   (tmp + fsync + rename).
3. The shim waits until ``proc.json`` names it (a program nobody recorded
   could never be found again), joins the cgroups, spawns the program (stdout/stderr straight into
   ``stdout.log``/``stderr.log``, no pipe through the agent), writes
   ``child.json``, deletes ``launch.json`` (it holds the env, maybe secrets)
   and leaves the cgroups again. Leaving matters: the shim's own memory is not
   charged to the workload, the OOM killer never picks it, the freezer does not
   freeze it, and "kill everything in the cgroup" never kills it, so it is
   always there to record how the program ended.
4. When the program ends, the shim writes ``exit_code`` atomically (a signal
   death is 128 + signum), kills whatever the program left behind in its
   process group and cgroup, and exits.

Every other verb reads those files and ``/proc`` again, so a new agent process
(``adopt()``) answers exactly as the old one would: the pid plus the kernel's
start time (``/proc/PID/stat`` field 22) tell "our shim is alive" from "a
recycled pid". Exit code present → Succeeded/Failed; processes gone without one
→ Failed, reason "Killed"; a ``stopped`` marker written by ``stop`` → Stopped.

Signals: ``stop`` sends SIGTERM to the shim, which relays it to its whole
process group exactly once (it ignores its own copy), and to anything in the
cgroup outside that group. After ``grace`` seconds everything but the shim gets
SIGKILL, the shim records 137 and exits (or is killed too if it does not).

Limits: cgroup v1 (one hierarchy per controller, as on this machine) or a pure
v2 hierarchy. Workload cgroups are ``gu/<name>-<hash of state_dir>`` under
the agent's own cgroup (v1) or under the v2 root (v2 forbids processes next to
child cgroups with controllers); the path is kept in ``proc.json``. Where no cgroup is writable the workload runs without limits
and a log line says so; it never fails for that. Suspend uses the freezer
(v1 ``freezer.state``, v2 ``cgroup.freeze``) and falls back to SIGSTOP of the
process group.
"""

from runtimes.native.driver import NativeRuntime

__all__ = ["NativeRuntime"]
