"""The fleet view, through the bucket every rig already shares: no server of our own.

Each daemon keeps one small object, `{prefix}/.ingest-agent/agents/{agent name}.json`, holding
its status report (the same one `agentctl status --json` prints) plus its name, version, host,
time and beat interval. It rewrites it every `[fleet] interval` and whenever its verdict or
session counts change. `agentctl fleet` lists those objects, from any machine that can read
the bucket, and judges each rig: a beat older than three intervals is CRITICAL (the rig is
off, cut off from S3, or its agent is dead), else the rig's own verdict stands.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from agent import __version__, health
from agent.config import Settings
from agent.logs import plain
from agent.redact import redact
from agent.transfer import make_client
from agent.units import human_age, human_bytes, iso

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("agent.fleet")

NAMESPACE = ".ingest-agent/agents/"
STALE_FACTOR = 3
# A beat is a few kilobytes; anything much larger under the namespace is not one of ours.
MAX_BEAT_SIZE = 1024 * 1024
# However often sessions change, at most one beat per this many seconds.
MIN_GAP = 5.0
# Nagios severity, worst last: a fleet is as bad as its worst rig.
_SEVERITY = {health.OK: 0, health.UNKNOWN: 1, health.WARNING: 2, health.CRITICAL: 3}


def agents_prefix(prefix: str) -> str:
    """Where the beats of agents writing under `prefix` live."""
    return f"{prefix}/{NAMESPACE}" if prefix else NAMESPACE


def beat_key(prefix: str, name: str) -> str:
    """The key of agent `name`'s beat."""
    return f"{agents_prefix(prefix)}{name}.json"


def beat_body(report: dict[str, Any], name: str, interval: float, now: float) -> bytes:
    """The beat object: the status report and who wrote it, when, and how often it will."""
    body = {
        "name": name,
        "version": __version__,
        "host": report.get("agent", {}).get("host"),
        "time": iso(now),
        "time_epoch": round(now, 3),
        "interval_s": interval,
        "status": {key: value for key, value in report.items() if key != "code"},
    }
    return json.dumps(body, sort_keys=True).encode()


def _fingerprint(report: dict[str, Any]) -> tuple[Any, ...]:
    """What counts as a state change worth an early beat."""
    return (
        report.get("state"),
        tuple(sorted(report.get("sessions", {}).items())),
        report.get("uploads", {}).get("paused_by"),
    )


class Beater:
    """Writes this agent's beat from its own thread, so a slow S3 never holds up the daemon's
    loop. Failures are logged (storm control merges repeats) and never stop anything."""

    def __init__(
        self,
        settings: Settings,
        client: S3Client,
        report: Callable[[], dict[str, Any]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client = client
        self.report = report
        self.clock = clock
        self.interval = settings.fleet.interval
        self.key = beat_key(settings.destination.prefix, settings.agent.name)
        self.sent = 0
        self._last: tuple[Any, ...] | None = None
        self._last_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self, report: dict[str, Any], now: float) -> bool:
        """Whether to beat now: the interval has passed, or the state changed (at most one
        beat per MIN_GAP seconds)."""
        if now - self._last_at >= self.interval:
            return True
        return _fingerprint(report) != self._last and now - self._last_at >= MIN_GAP

    def beat(self, *, force: bool = False) -> bool:
        """Write the beat if due (or `force`); return whether one was written."""
        try:
            report = self.report()
        except Exception as error:  # the database busy or broken: say so, try again later
            log.warning("fleet_beat_failed", key=self.key, error=f"reading status: {error}")
            return False
        now = self.clock()
        if not force and not self.due(report, now):
            return False
        try:
            self.client.put_object(
                Bucket=self.settings.destination.bucket,
                Key=self.key,
                Body=beat_body(report, self.settings.agent.name, self.interval, now),
                ContentType="application/json",
                **({"ACL": self.settings.destination.acl} if self.settings.destination.acl else {}),  # type: ignore[arg-type]
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            log.warning("fleet_beat_failed", key=self.key, error=redact(str(error)))
            self._last_at = now  # not again before the next interval or change
            return False
        self._last, self._last_at = _fingerprint(report), now
        self.sent += 1
        return True

    def start(self) -> None:
        """Beat now, then keep beating from a background thread until `stop`."""
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # A change is looked for every MIN_GAP seconds, the closest two beats may be: the
        # status report behind the look costs about a millisecond, which once a second was
        # a third of an idle daemon's CPU (bench: idle).
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(min(MIN_GAP, self.interval))

    def stop(self, timeout: float = 0.5) -> None:
        """Stop the thread (the caller writes the last beat, after recording the stop). A
        beat stuck on a hung server is abandoned after `timeout`: the daemon must stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def last_beat(self, timeout: float = 2.0) -> bool:
        """Write one beat now, waiting at most `timeout` seconds for it (a hung S3 must not
        hold up a stop that systemd expects within its TimeoutStopSec); return whether it
        was written in time."""
        written = threading.Event()
        if self._thread is not None and self._thread.is_alive():
            # The loop's beat is stuck on the server: one more would only wait the same way,
            # and could land after it in the wrong order. The fleet will see silence.
            return False

        def send() -> None:
            if self.beat(force=True):
                written.set()

        threading.Thread(target=send, name="fleet-last", daemon=True).start()
        return written.wait(timeout)


def beat_client(settings: Settings) -> S3Client:
    """A client for beats and fleet reads: short timeouts, so a dead server costs seconds."""
    upload = replace(settings.upload, connect_timeout=5.0, read_timeout=15.0, concurrency=4)
    return make_client(settings.destination, upload)


# --- reading the fleet -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rig:
    """One agent as the bucket shows it."""

    key: str
    name: str
    code: int
    summary: str
    beat_age: float | None
    beat: dict[str, Any]

    @property
    def state(self) -> str:
        """ok, warning, critical or unknown."""
        return health.NAMES[self.code]

    def row(self) -> dict[str, Any]:
        """This rig in `agentctl fleet --json`."""
        status = self.beat.get("status", {})
        return {
            "name": self.name,
            "key": self.key,
            "state": self.state,
            "summary": self.summary,
            "beat_age_s": None if self.beat_age is None else round(self.beat_age, 1),
            "interval_s": self.beat.get("interval_s"),
            "version": self.beat.get("version"),
            "host": self.beat.get("host"),
            "sessions": status.get("sessions"),
            "backlog": status.get("backlog"),
            "last_error": status.get("last_error"),
        }


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def judge(key: str, body: bytes | None, modified: float, now: float) -> Rig:
    """Judge one beat object: its own verdict, unless it is stale or unreadable. The age is
    counted from the server's LastModified, so a rig's wrong clock cannot hide a dead rig.
    Anything in the object that is not what an agent writes makes that rig UNKNOWN; other
    rigs are never affected."""
    name = plain(key.rsplit("/", 1)[-1].removesuffix(".json"))
    age = max(0.0, now - modified)
    try:
        beat = json.loads(body or b"")
        if not isinstance(beat, dict):
            raise ValueError("not a JSON object")
        status = beat["status"]
        if not isinstance(status, dict):
            raise ValueError("status is not an object")
        interval = float(beat["interval_s"])
        if not interval > 0:
            raise ValueError(f"interval_s {interval!r} is not positive")
        code = health.CODES[status["state"]]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        return Rig(key, name, health.UNKNOWN, f"unreadable beat object: {plain(error)}", age, {})
    # Only what `fleet` shows is kept, each of the type an agent writes.
    clean = {
        "version": plain(beat.get("version", "-")),
        "host": plain(beat.get("host", "-")),
        "interval_s": interval,
        "status": {
            "sessions": {
                plain(k): v
                for k, v in _mapping(status.get("sessions")).items()
                if isinstance(v, int)
            },
            "backlog": {
                k: v
                for k, v in _mapping(status.get("backlog")).items()
                if k in ("files", "bytes") and isinstance(v, int)
            },
            "last_error": None if status.get("last_error") is None else plain(status["last_error"]),
        },
    }
    name = plain(beat.get("name") or name)
    summary = plain(status.get("summary", ""))
    limit = STALE_FACTOR * interval
    if age > limit:
        return Rig(
            key,
            name,
            health.CRITICAL,
            f"no beat for {human_age(age)} (limit {human_age(limit)}): the rig is off, cut off "
            f"from S3, or its agent is not running; last said: {summary}",
            age,
            clean,
        )
    return Rig(key, name, code, summary, age, clean)


def _children(client: S3Client, bucket: str, base: str) -> list[str]:
    """The "folders" directly under `base` (which is "" or ends in "/"), ours left out."""
    found: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=base, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            child = common.get("Prefix", "")
            if child and child != f"{base}.ingest-agent/":
                found.append(child)
    return found


def _beat_prefixes(client: S3Client, bucket: str, prefix: str, depth: int = 2) -> list[str]:
    """Where beats may be: under `prefix` itself and up to `depth` levels below it (rigs
    usually write under prefixes of their own: "rig-01", "lab-a/rig-01")."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    levels = [[base]]
    for _ in range(depth):
        levels.append(
            [child for parent in levels[-1] for child in _children(client, bucket, parent)]
        )
    return [f"{folder}{NAMESPACE}" for level in levels for folder in level]


def read_fleet(client: S3Client, bucket: str, prefix: str, now: float | None = None) -> list[Rig]:
    """Every agent's beat under `prefix` (and two levels below), judged; sorted worst first,
    then by name."""
    objects: list[tuple[str, float, int]] = []
    for where in _beat_prefixes(client, bucket, prefix):
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=where):
            for item in page.get("Contents", []):
                key = item.get("Key", "")
                if key.endswith(".json") and "/" not in key[len(where) :]:
                    objects.append((key, item["LastModified"].timestamp(), item.get("Size", 0)))

    def fetch(entry: tuple[str, float, int]) -> Rig:
        key, modified, size = entry
        name = plain(key.rsplit("/", 1)[-1].removesuffix(".json"))
        if size > MAX_BEAT_SIZE:
            return Rig(key, name, health.UNKNOWN, f"not a beat: {size} bytes", None, {})
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_BEAT_SIZE + 1)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            return Rig(
                key, name, health.UNKNOWN, f"cannot read: {plain(redact(str(error)))}", None, {}
            )
        return judge(key, body, modified, time.time() if now is None else now)

    with ThreadPoolExecutor(max_workers=8) as pool:
        rigs = list(pool.map(fetch, objects))
    return sorted(rigs, key=lambda rig: (-_SEVERITY[rig.code], rig.name))


def worst(rigs: list[Rig]) -> int:
    """The exit code for the whole fleet: its worst rig's; UNKNOWN when there is none."""
    if not rigs:
        return health.UNKNOWN
    return max((rig.code for rig in rigs), key=lambda code: _SEVERITY[code])


def fleet_lines(rigs: list[Rig], where: str) -> list[str]:
    """`agentctl fleet` for people: a verdict line, then one line per rig."""
    if not rigs:
        return [f"UNKNOWN - no agent beats found under {where}"]
    code = worst(rigs)
    bad = sum(rig.code != health.OK for rig in rigs)
    lines = [f"{health.NAMES[code].upper()} - {len(rigs)} rig(s), {bad} not OK ({where})"]
    lines.append(f"{'RIG':<20} {'STATE':<9} {'BEAT':>7} {'BACKLOG':>20} {'FAILED':>6}  VERSION")
    for rig in rigs:
        status = rig.beat.get("status", {})
        backlog = status.get("backlog") or {}
        failed = (status.get("sessions") or {}).get("failed", "-")
        age = "-" if rig.beat_age is None else human_age(rig.beat_age)
        files = backlog.get("files", "-")
        size = human_bytes(backlog["bytes"]) if "bytes" in backlog else "-"
        lines.append(
            f"{rig.name:<20} {rig.state.upper():<9} {age:>7} {f'{files} / {size}':>20} "
            f"{failed!s:>6}  {rig.beat.get('version', '-')}"
        )
        if rig.code != health.OK:
            lines.append(f"    {rig.summary}")
    return lines
