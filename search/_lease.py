"""One writer per experiment: the lease that ``search``, ``resume``, ``evaluate`` and ``confirm``
hold while they write an experiment (reading commands never need it).

In a local folder (or a shared filesystem) the lease is an ``flock`` on the experiment's
clustune.json (written once, when the experiment is created, and never replaced), which the
kernel releases however its holder ends (exit, kill, crash), so a lease is never stale;
EXPERIMENT/lease.json names the holder for the one-line refusal while it holds it. In cloud
storage, where nothing locks, the lease is the object EXPERIMENT/lease.json: its holder renews
it every RENEW_S seconds; one not renewed for TTL_S seconds, or held by a process of this host
that no longer runs, is stale and taken over. Two writers that find no lease both write theirs, wait
SETTLE_S seconds and read it back: the last write wins, the other is refused (sound as long as
a write is visible within SETTLE_S, which S3's and GCS's read-after-write consistency give).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from analysis import META_FILE
from trainable import StoragePath

from ._errors import UsageError

__all__ = ["LEASE_FILE", "hold_lease", "lease_holder", "name_holder"]

LEASE_FILE = "lease.json"
TTL_S = 60.0
RENEW_S = 10.0
SETTLE_S = 2.0

_held: dict[str, int] = {}  # experiment URI -> how many nested holds this process has


@dataclass(frozen=True)
class Holder:
    command: str  # e.g. "clustune resume"
    host: str
    pid: int
    started: str  # local time, ISO 8601
    token: str
    renewed: float  # time.time() of the last renewal (cloud storage)

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid} on {self.host}, since {self.started})"


def _read(file: StoragePath) -> Holder | None:
    try:
        return Holder(**json.loads(file.read_text()))
    except (FileNotFoundError, OSError, ValueError, TypeError):
        return None


def lease_holder(experiment: StoragePath) -> Holder | None:
    """Who holds the experiment's lease now (None: nobody)."""
    holder = _read(experiment / LEASE_FILE)
    if holder is None:
        return None
    if experiment.is_local:
        with (experiment.local / META_FILE).open("rb") as meta:
            try:
                fcntl.flock(meta, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return holder
            fcntl.flock(meta, fcntl.LOCK_UN)
        return None
    return None if _stale(holder) else holder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: Holder) -> bool:
    if holder.host == socket.gethostname():
        return not _alive(holder.pid)
    return time.time() - holder.renewed > TTL_S


def _refuse(experiment: StoragePath, holder: Holder) -> UsageError:
    return UsageError(f"{experiment} is being written by {holder}: one writer at a time (wait "
                      "for it, or stop it first)")


@contextlib.contextmanager
def hold_lease(experiment: StoragePath, command: str, named: bool = True) -> Iterator[None]:
    """Hold the experiment's lease for the duration (refused in one line while another
    process holds it; nested holds by one process are one hold). ``named=False`` holds a
    folder's lock without writing lease.json until :func:`name_holder`, so a command refused
    by a later check leaves the folder untouched (a rival is then refused as "another
    process"); a bucket's lease is its object, always written."""
    key = experiment.uri
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    holder = Holder(command, socket.gethostname(), os.getpid(),
                    time.strftime("%Y-%m-%dT%H:%M:%S"), uuid.uuid4().hex, time.time())
    hold = functools.partial(_hold_local, named=named) if experiment.is_local else _hold_bucket
    with hold(experiment, holder):
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]


_unnamed: dict[str, Holder] = {}  # folder experiments held but not yet named in lease.json


def name_holder(experiment: StoragePath) -> None:
    """Write lease.json for a folder lease held with ``named=False``."""
    holder = _unnamed.pop(experiment.uri, None)
    if holder is not None:
        (experiment / LEASE_FILE).atomic_write_text(json.dumps(asdict(holder)))


@contextlib.contextmanager
def _hold_local(experiment: StoragePath, holder: Holder, named: bool) -> Iterator[None]:
    with (experiment.local / META_FILE).open("rb") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read(experiment / LEASE_FILE)
            raise _refuse(experiment, other or Holder("another process", "?", 0, "?", "", 0)) \
                from None
        _unnamed[experiment.uri] = holder
        if named:
            name_holder(experiment)
        try:
            yield
        finally:
            if _unnamed.pop(experiment.uri, None) is None:  # named: lease.json is ours
                (experiment / LEASE_FILE).unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _settle() -> None:
    """Give a rival writer's lease, written at the same moment, time to become visible."""
    time.sleep(SETTLE_S)


@contextlib.contextmanager
def _hold_bucket(experiment: StoragePath, holder: Holder) -> Iterator[None]:
    file = experiment / LEASE_FILE
    other = _read(file)
    if other is not None and not _stale(other):
        raise _refuse(experiment, other)
    file.atomic_write_text(json.dumps(asdict(holder)))
    _settle()
    won = _read(file)
    if won is None or won.token != holder.token:
        raise _refuse(experiment, won or holder)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_S):
            current = _read(file)
            if current is None or current.token != holder.token:
                return  # taken over: nothing of ours to renew
            with contextlib.suppress(OSError):
                file.atomic_write_text(json.dumps({**asdict(holder), "renewed": time.time()}))

    thread = threading.Thread(target=renew, name="clustune-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        current = _read(file)
        if current is not None and current.token == holder.token:
            file.unlink(missing_ok=True)
