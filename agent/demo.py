"""`agentctl demo`: a local S3 server on 127.0.0.1, a simulated instrument writing sessions
into a temporary folder, and the agent ingesting them, with live status. Everything it starts
it stops, on completion or Ctrl-C; the temporary folder is removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import boto3

from agent import logs
from agent.config import load_settings
from agent.service import Daemon
from agent.state import State

DEMO_BUCKET = "demo-lab-raw"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalS3:
    """moto's S3 server on loopback, in a thread of this process."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer  # noqa: PLC0415 - optional extra
        except ImportError as error:
            raise SystemExit(
                "the demo needs moto's server: pip install 'ingest-agent[demo]'"
            ) from error
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = ThreadedMotoServer(
            ip_address="127.0.0.1", port=self.port, verbose=False
        )

    def start(self) -> None:
        """Start serving (without werkzeug's per-request lines on the terminal)."""
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()


CONFIG_TEMPLATE = """\
[agent]
name = "demo-rig"
state_dir = "{state}"
rescan_interval = "30s"
heartbeat_interval = "1s"

[destination]
bucket = "{bucket}"
prefix = "demo-rig"
endpoint_url = "{url}"
region = "us-east-1"

[upload]
concurrency = 4
part_size = "5MiB"
multipart_threshold = "8MiB"

[[source]]
name = "ephys"
path = "{ephys}"
session_depth = 2
quiet_period = "2s"
marker = "transfer_me.flag"

[[source]]
name = "imaging"
path = "{imaging}"
session_depth = 2
quiet_period = "3s"
"""


def _write(path: Path, size: int, chunks: int = 4, pause: float = 0.2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(max(1, size // chunks))
    with path.open("wb") as handle:
        written = 0
        while written < size:
            piece = block[: size - written]
            handle.write(piece)
            handle.flush()
            written += len(piece)
            time.sleep(pause)


def simulate_instrument(ephys: Path, imaging: Path, count: int, stop: threading.Event) -> list[str]:
    """Write `count` sessions, alternating a marker-rule ephys session (a multipart-sized
    recording, then the marker) and an imaging session that ends by going quiet. Returns
    the session ids it wrote."""
    written: list[str] = []
    for index in range(count):
        if stop.is_set():
            break
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime()) + f"_{index}"
        if index % 2 == 0:
            session = ephys / f"mouse{index:02d}" / stamp
            _write(session / "continuous.ap.bin", 12 * 1024**2, chunks=6)
            _write(session / "continuous.ap.meta", 2048, chunks=1, pause=0)
            _write(session / "events.json", 512, chunks=1, pause=0)
            (session / "transfer_me.flag").touch()
            written.append(f"ephys/mouse{index:02d}/{stamp}")
        else:
            session = imaging / f"plate{index:02d}" / stamp
            for tile in range(6):
                _write(
                    session / "Images" / f"r01c0{tile}f01p01-ch1.tiff",
                    256 * 1024,
                    chunks=1,
                    pause=0.1,
                )
            _write(session / "acquisition.log", 1024, chunks=1, pause=0)
            written.append(f"imaging/plate{index:02d}/{stamp}")
    return written


def _render(state: State, expected: int) -> str:
    rows = state.sessions.all()
    lines = [f"--- {time.strftime('%H:%M:%S')}  sessions seen {len(rows)}/{expected}"]
    for record in rows:
        done = 100 * record.uploaded_bytes / record.bytes if record.bytes else 0.0
        note = record.reason or record.error or record.manifest_key or ""
        lines.append(
            f"  {record.id:<48} {record.state:<9} {record.files:>3} files {done:>4.0f}%  {note}"
        )
    return "\n".join(lines)


def run_demo(sessions: int = 3, keep_running: bool = False) -> int:
    """Run the demonstration; return 0 when it ends (finished or Ctrl-C)."""
    workdir = Path(tempfile.mkdtemp(prefix="ingest-agent-demo-"))
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        print("\nstopping the demo ...", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "demo"),
        ("AWS_SECRET_ACCESS_KEY", "demo"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    server = LocalS3()
    server.start()
    daemon_thread: threading.Thread | None = None
    try:
        ephys, imaging = workdir / "ephys", workdir / "imaging"
        ephys.mkdir()
        imaging.mkdir()
        config = workdir / "config.toml"
        config.write_text(
            CONFIG_TEMPLATE.format(
                state=workdir / "state",
                bucket=DEMO_BUCKET,
                url=server.url,
                ephys=ephys,
                imaging=imaging,
            )
        )
        settings = load_settings(config)
        log_path = workdir / "agent.log"
        log_stream = log_path.open("w", encoding="utf-8")
        logs.configure("info", log_stream, force_json=True)
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
        client.create_bucket(Bucket=DEMO_BUCKET)
        print(f"local S3 server: {server.url}  bucket: {DEMO_BUCKET}")
        print(f"instrument folders: {ephys} (marker rule), {imaging} (quiet-period rule)")
        print(f"agent log (JSON lines): {log_path}\n")

        # Opened (created) before the agent's thread starts: both creating the database at
        # once raced (database is locked, here or in the agent's thread).
        state = State.open(settings.state_db_path)
        try:
            daemon = Daemon(settings, stop=stop)
            daemon_thread = threading.Thread(target=daemon.run, name="agent", daemon=True)
            daemon_thread.start()
            instrument = threading.Thread(
                target=simulate_instrument, args=(ephys, imaging, sessions, stop), daemon=True
            )
            instrument.start()

            deadline = time.monotonic() + 120
            while not stop.is_set():
                print(_render(state, sessions), flush=True)
                uploaded = len(state.sessions.all("uploaded"))
                if uploaded >= sessions and not keep_running:
                    break
                if time.monotonic() > deadline and not keep_running:
                    print(
                        "the demo did not finish within 120 s; see the agent log", file=sys.stderr
                    )
                    break
                stop.wait(1.0)
        finally:
            state.close()

        print("\nobjects in the bucket:")
        listing = client.list_objects_v2(Bucket=DEMO_BUCKET)
        for item in listing.get("Contents", []):
            print(f"  s3://{DEMO_BUCKET}/{item['Key']}  ({item['Size']} bytes)")
    finally:
        stop.set()
        if daemon_thread is not None:
            daemon_thread.join(30)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, previous)
        logs.configure("info")
    print("demo finished; everything it started is stopped and its temporary folder removed")
    return 0
