"""Settings: the frozen dataclasses the agent runs with, one per TOML table, and their defaults.

Plain values only. Reading and checking the TOML that fills them belongs to agent/config.py,
which re-exports every name here: the rest of the agent imports them from `agent.config`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.planning import DEFAULT_KEY_TEMPLATE, Layout
from agent.throttle import Window

DEFAULT_STATE_DIR = "/var/lib/ingest-agent"
DEFAULT_EXCLUDES = ("*.tmp", "*.part", "~$*", ".DS_Store", "Thumbs.db")


@dataclass(frozen=True)
class AgentSettings:
    """The `[agent]` table."""

    name: str = field(default_factory=socket.gethostname)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    log_level: str = "info"
    log_target: str = "auto"
    rescan_interval: float = 300.0
    heartbeat_interval: float = 5.0
    heartbeat_stale: float = 60.0


@dataclass(frozen=True)
class DestinationSettings:
    """The `[destination]` table: where sessions go and how objects are written."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    checksum: str = "crc32c"
    server_checksums: bool = True
    conditional_writes: str = "auto"
    storage_class: str | None = None
    acl: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadSettings:
    """The `[upload]` table: how hard the agent may push the network and memory."""

    concurrency: int = 4
    part_size: int = 16 * 1024**2
    multipart_threshold: int = 16 * 1024**2
    max_bandwidth: int = 0
    max_memory: int = 64 * 1024**2  # or concurrency x part_size when larger (config.py)
    retries: int = 5
    retry_delay: float = 1.0
    failed_retry_delay: float = 300.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    direct_requests: bool = True
    windows: tuple[Window, ...] = ()


@dataclass(frozen=True)
class SourceSettings:
    """One `[[source]]` table: an instrument folder and its session rule."""

    name: str
    path: Path
    session_depth: int = 2
    quiet_period: float = 300.0
    marker: str | None = None
    required: tuple[str, ...] = ()
    min_age: float = 0.0
    exclude: tuple[str, ...] = DEFAULT_EXCLUDES
    watch: str = "auto"
    poll_interval: float = 30.0
    metadata: Mapping[str, str] = field(default_factory=dict)
    layout: Layout | None = None
    key_template: str = DEFAULT_KEY_TEMPLATE
    strict_names: bool = False
    check_open_files: bool = True
    upload_while_growing: bool = False
    growing_part_size: int = 64 * 1024**2


@dataclass(frozen=True)
class StatusSettings:
    """The `[status]` table: when `agentctl status` turns WARNING over a backlog."""

    # A session complete (ready) for longer than this, and not yet uploading.
    ready_warning: float = 6 * 3600.0
    # Sessions ready or uploading, yet no file finished uploading for this long.
    stalled_warning: float = 3600.0


@dataclass(frozen=True)
class MetricsSettings:
    """The `[metrics]` table: Prometheus exposition, both ways off by default."""

    listen: tuple[str, int] | None = None
    textfile: Path | None = None
    interval: float = 15.0


@dataclass(frozen=True)
class FleetSettings:
    """The `[fleet]` table: the status object each daemon keeps in the bucket."""

    interval: float = 60.0  # 0 turns the beat off


@dataclass(frozen=True)
class HooksSettings:
    """The `[hooks]` table: commands run after events, never blocking uploads."""

    on_uploaded: tuple[str, ...] | None = None  # argv
    timeout: float = 300.0


@dataclass(frozen=True)
class Settings:
    """Everything the agent needs, validated once."""

    config_path: Path
    agent: AgentSettings
    destination: DestinationSettings
    upload: UploadSettings
    sources: tuple[SourceSettings, ...]
    status: StatusSettings = StatusSettings()
    metrics: MetricsSettings = MetricsSettings()
    fleet: FleetSettings = FleetSettings()
    hooks: HooksSettings = HooksSettings()

    @property
    def state_db_path(self) -> Path:
        """The SQLite file holding the agent's durable state."""
        return self.agent.state_dir / "state.db"

    def source(self, name: str) -> SourceSettings:
        """Return the source called `name`. Raise KeyError if there is none."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)
