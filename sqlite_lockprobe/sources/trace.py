"""Run a user's program with the probe injected, pass Ctrl-C and SIGTERM on to it, and gather
the event files its processes wrote (`lockprobe trace -- CMD`).

The probe reaches the program through a `sitecustomize` module on PYTHONPATH (see
`_inject/sitecustomize.py` and `tracer.py`); environment variables carry the settings to it
and on to every Python process the program starts.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.eventfile import FILE_PREFIX, FILE_SUFFIX, read_event_file
from sqlite_lockprobe.events.records import merge_events
from sqlite_lockprobe.probe import _inject
from sqlite_lockprobe.probe.tracer import ENV_COMMAND, ENV_DB, ENV_DIR, ENV_PARENT

INJECT_DIR = str(Path(_inject.__file__).resolve().parent)

# After a second Ctrl-C (or SIGTERM), the program has this long to exit before it is sent
# SIGTERM, and then as long again before SIGKILL.
GRACE_SECONDS = 5.0
# Linux's si_code for a signal the kernel sent, e.g. the terminal's Ctrl-C (SI_KERNEL).
_SI_KERNEL = 0x80
_FORWARDED = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class TraceResult:
    """What a traced run produced: the merged events and how the program ended."""

    argv: tuple[str, ...]
    events: list[dict[str, Any]]
    exit_code: int
    signal: int | None
    interrupted: bool
    wall_seconds: float
    db: str | None
    pids: tuple[int, ...] = ()
    escalated: str | None = None  # "SIGTERM" or "SIGKILL" when lockprobe had to stop it
    connections: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The signals lockprobe received while the program ran, in order ("SIGINT", "SIGTERM"),
    # and whether a SIGINT among them was a terminal's Ctrl-C (sent by the kernel).
    received: tuple[str, ...] = ()
    ctrl_c: bool = False

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def nothing_recorded(self) -> bool:
        return self.connections == 0

    @property
    def outcome(self) -> str:
        """How the program ended, in words: 'exited with code 3', 'killed by SIGKILL'."""
        if self.signal is not None:
            text = f"killed by {signal_name(self.signal)}"
        else:
            text = f"exited with code {self.exit_code}"
        if self.received:
            text += f" after {self.signals_received}"
        if self.escalated:
            text += f" (lockprobe sent {self.escalated} after the grace period)"
        return text

    @property
    def signals_received(self) -> str:
        """'Ctrl-C', 'SIGTERM', 'Ctrl-C and SIGTERM': each signal lockprobe got, once."""
        words = ["Ctrl-C" if s == "SIGINT" and self.ctrl_c else s for s in self.received]
        return " and ".join(dict.fromkeys(words))


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def trace_environment(
    trace_dir: str, argv: list[str], db: str | None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The program's environment: its own, with the inject directory first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = INJECT_DIR + (os.pathsep + existing if existing else "")
    env[ENV_DIR] = trace_dir
    env[ENV_COMMAND] = shlex.join(argv)
    env[ENV_PARENT] = str(os.getpid())
    if db is not None:
        env[ENV_DB] = os.path.realpath(db)
    else:
        env.pop(ENV_DB, None)
    return env


def trace_program(
    argv: list[str],
    db: str | os.PathLike[str] | None = None,
    grace_seconds: float = GRACE_SECONDS,
) -> TraceResult:
    """Run `argv` with every sqlite3 connection instrumented (only those to `db` if given),
    wait for it to end, and return what its processes recorded. After a second Ctrl-C the
    program has `grace_seconds` to exit before SIGTERM, and as long again before SIGKILL.

    Raises LockprobeError (exit code 127 or 126) when the command cannot be started."""
    if not argv:
        raise LockprobeError("no command given: lockprobe trace -- CMD [ARGS...]")
    db_path = os.path.realpath(db) if db is not None else None
    trace_dir = tempfile.mkdtemp(prefix="lockprobe-trace-")
    try:
        env = trace_environment(trace_dir, argv, db_path)
        started = time.monotonic()
        # Started before lockprobe blocks signals: a child inherits the signal mask.
        proc = _start(argv, env)
        with _signals_held():
            ending = _wait(proc, grace_seconds)
        wall = time.monotonic() - started
        files = sorted(Path(trace_dir).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
        events = merge_events(read_event_file(f) for f in files)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    code = proc.returncode
    pids = sorted({int(e["pid"]) for e in events if e["k"] == "meta" and e.get("pid")})
    return TraceResult(
        argv=tuple(argv),
        events=events,
        exit_code=128 - code if code < 0 else code,
        signal=-code if code < 0 else None,
        interrupted=ending.interrupts > 0,
        wall_seconds=wall,
        db=db_path,
        pids=tuple(pids),
        escalated=ending.escalated,
        connections=sum(1 for e in events if e["k"] == "open"),
        received=tuple(signal_name(s) for s in ending.signals),
        ctrl_c=ending.ctrl_c,
    )


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, env=env)
    except FileNotFoundError:
        raise LockprobeError(f"{argv[0]}: command not found", exit_code=127) from None
    except PermissionError:
        raise LockprobeError(f"{argv[0]}: permission denied", exit_code=126) from None
    except OSError as exc:
        raise LockprobeError(f"{argv[0]}: cannot run ({exc.strerror})", exit_code=126) from None


@dataclass
class _Ending:
    interrupts: int = 0
    escalated: str | None = None
    signals: list[int] = field(default_factory=list)  # received, in order
    ctrl_c: bool = False  # a SIGINT came from the terminal


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Block SIGINT/SIGTERM/SIGCHLD in lockprobe while the program runs, so `_wait` takes them
    with sigtimedwait and learns who sent them (siginfo)."""
    if not hasattr(signal, "pthread_sigmask") or not hasattr(signal, "sigtimedwait"):
        yield
        return
    watched = {*_FORWARDED, signal.SIGCHLD}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        yield
    finally:
        while signal.sigtimedwait(watched, 0) is not None:
            pass  # drop late signals rather than die of them while reporting
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wait(proc: subprocess.Popen[bytes], grace: float) -> _Ending:
    """Wait for the program. Ctrl-C and SIGTERM go to the program first: a terminal's Ctrl-C
    already reached it (same process group), a signal sent to lockprobe alone is passed on.
    From the second one on, the program has `grace` seconds to end, then SIGTERM, then SIGKILL."""
    ending = _Ending()
    if not hasattr(signal, "sigtimedwait"):
        return _wait_with_handlers(proc, ending)
    watched = {*_FORWARDED, signal.SIGCHLD}
    deadline: float | None = None
    while proc.poll() is None:
        timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        info = signal.sigtimedwait(watched, timeout)
        if info is not None and info.si_signo in _FORWARDED:
            ending.interrupts += 1
            ending.signals.append(info.si_signo)
            if info.si_signo == signal.SIGINT and info.si_code == _SI_KERNEL:
                ending.ctrl_c = True
            if not _program_got_it_too(proc, info):
                _send(proc, info.si_signo)
            if ending.interrupts >= 2 and deadline is None:
                deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() >= deadline and proc.poll() is None:
            deadline = _escalate(proc, ending, grace)
    return ending


def _program_got_it_too(proc: subprocess.Popen[bytes], info: Any) -> bool:
    """A terminal sends Ctrl-C to its whole foreground process group: when the program is in
    ours, it has its own copy already and must not get a second one."""
    if info.si_signo != signal.SIGINT or info.si_code != _SI_KERNEL:
        return False
    try:
        return os.getpgid(proc.pid) == os.getpgrp()
    except OSError:
        return False


def _send(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


def _escalate(proc: subprocess.Popen[bytes], ending: _Ending, grace: float) -> float | None:
    """Past the grace period: SIGTERM first, SIGKILL after another grace period."""
    if ending.escalated is None:
        ending.escalated = "SIGTERM"
        _send(proc, signal.SIGTERM)
        return time.monotonic() + grace
    ending.escalated = "SIGKILL"
    _send(proc, signal.SIGKILL)
    return None


def _wait_with_handlers(proc: subprocess.Popen[bytes], ending: _Ending) -> _Ending:
    """Where sigtimedwait is missing: plain handlers that pass every signal on."""

    def forward(signum: int, _frame: Any) -> None:
        ending.interrupts += 1
        ending.signals.append(signum)
        _send(proc, signum)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        while True:
            try:
                proc.wait()
                return ending
            except KeyboardInterrupt:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
