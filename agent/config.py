"""Configuration: TOML read once into frozen dataclasses, every problem reported together.

Given a path, `load_settings` returns `Settings` or raises `ConfigError` listing every
problem found (file, key, what is wrong, what is allowed). Nothing here creates files or
directories: a bad configuration leaves no trace.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from agent.errors import ConfigError, ConfigProblem
from agent.planning import BUILTIN_KEY_FIELDS, DEFAULT_KEY_TEMPLATE, Layout, template_fields
from agent.throttle import DAY_NAMES, Window, parse_clock

DEFAULT_CONFIG_PATH = "/etc/ingest-agent/config.toml"
DEFAULT_STATE_DIR = "/var/lib/ingest-agent"
DEFAULT_EXCLUDES = ("*.tmp", "*.part", "~$*", ".DS_Store", "Thumbs.db")
CHECKSUM_ALGORITHMS = ("crc32c", "crc32", "sha256")
WATCH_MODES = ("auto", "inotify", "poll", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_TARGETS = ("auto", "journald", "console", "json")
CONDITIONAL_WRITE_MODES = ("auto", "on", "off")
MIN_PART_SIZE = 5 * 1024**2
MAX_PART_SIZE = 5 * 1024**3
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


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
    max_memory: int = 256 * 1024**2
    retries: int = 5
    retry_delay: float = 1.0
    failed_retry_delay: float = 300.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
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


def parse_duration(value: object) -> float:
    """Given int/float seconds or a string like "90s", "5m", "1h", return seconds.

    Raise ValueError with what is allowed otherwise.
    """
    if isinstance(value, bool):
        raise ValueError('expected seconds or a string such as "90s", "5m", "1h"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_PATTERN.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(
        f"{value!r} is not a duration; use integer seconds or a number followed by "
        's, m or h, e.g. 90, "90s", "5m", "1h"'
    )


def parse_size(value: object) -> int:
    """Given integer bytes or a string like "16MiB", "5 GB", return bytes.

    Raise ValueError with what is allowed otherwise.
    """
    if isinstance(value, bool):
        raise ValueError('expected bytes or a string such as "16MiB"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_PATTERN.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(
        f"{value!r} is not a size; use integer bytes or a number followed by "
        'KiB, MiB, GiB (or KB, MB, GB), e.g. "16MiB"'
    )


T = TypeVar("T")


class _Table:
    """Reads typed keys out of one TOML table, collecting problems instead of raising."""

    def __init__(
        self, data: Mapping[str, Any], where: str, file: str, problems: list[ConfigProblem]
    ) -> None:
        self.data = dict(data)
        self.where = where
        self.file = file
        self.problems = problems
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, self._key(key), message))

    def get(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        """Return the converted value of `key`, or `default` when absent or invalid."""
        self.seen.add(key)
        if key not in self.data:
            return default
        try:
            return convert(self.data[key])
        except (TypeError, ValueError) as error:
            self.problem(key, str(error))
            return default

    def require(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        """Like `get`, but a missing key is a problem."""
        if key not in self.data:
            self.seen.add(key)
            self.problem(key, "is required")
            return default
        return self.get(key, convert, default)

    def finish(self) -> None:
        """Report every key that was present but not understood."""
        for key in self.data:
            if key not in self.seen:
                allowed = ", ".join(sorted(self.seen))
                self.problem(key, f"unknown key; allowed here: {allowed}")


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _nonempty_string(value: Any) -> str:
    text = _string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _path(value: Any) -> Path:
    return Path(_nonempty_string(value))


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"must be at least {minimum}{upper}, got {value}")
        return value

    return convert


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _string(value).lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return text

    return convert


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _string_table(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValueError('expected a table of string values, e.g. { project = "v1" }')
    return dict(value)


def _size_between(minimum: int, maximum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        size = parse_size(value)
        if not minimum <= size <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum} bytes, got {size}")
        return size

    return convert


def _prefix(value: Any) -> str:
    text = _string(value).strip("/")
    if any(part in ("", ".", "..") for part in text.split("/")) and text:
        raise ValueError(f"{value!r} has an empty, '.' or '..' segment")
    return text


def _source_name(value: Any) -> str:
    text = _string(value)
    if not _NAME_PATTERN.match(text):
        raise ValueError(
            f"{value!r} must start with a letter or digit and hold only letters, digits, "
            "'.', '_' and '-' (it becomes part of object keys)"
        )
    return text


def _read_agent(table: _Table) -> AgentSettings:
    defaults = AgentSettings()
    settings = AgentSettings(
        name=table.get("name", _source_name, defaults.name),
        state_dir=table.get("state_dir", _path, defaults.state_dir),
        log_level=table.get("log_level", _choice(LOG_LEVELS), defaults.log_level),
        log_target=table.get("log_target", _choice(LOG_TARGETS), defaults.log_target),
        rescan_interval=table.get("rescan_interval", parse_duration, defaults.rescan_interval),
        heartbeat_interval=table.get(
            "heartbeat_interval", parse_duration, defaults.heartbeat_interval
        ),
        heartbeat_stale=table.get("heartbeat_stale", parse_duration, defaults.heartbeat_stale),
    )
    if settings.heartbeat_stale <= settings.heartbeat_interval:
        table.problem("heartbeat_stale", "must be longer than heartbeat_interval")
    if settings.state_dir.exists() and not settings.state_dir.is_dir():
        table.problem("state_dir", f"{settings.state_dir} exists and is not a directory")
    table.finish()
    return settings


def _read_destination(table: _Table) -> DestinationSettings:
    defaults = DestinationSettings(bucket="")  # the bucket has no default: it is required
    settings = DestinationSettings(
        bucket=table.require("bucket", _nonempty_string, defaults.bucket),
        prefix=table.get("prefix", _prefix, defaults.prefix),
        endpoint_url=table.get("endpoint_url", _nonempty_string, defaults.endpoint_url),
        region=table.get("region", _nonempty_string, defaults.region),
        profile=table.get("profile", _nonempty_string, defaults.profile),
        checksum=table.get("checksum", _choice(CHECKSUM_ALGORITHMS), defaults.checksum),
        server_checksums=table.get("server_checksums", _boolean, defaults.server_checksums),
        conditional_writes=table.get(
            "conditional_writes", _choice(CONDITIONAL_WRITE_MODES), defaults.conditional_writes
        ),
        storage_class=table.get("storage_class", _nonempty_string, defaults.storage_class),
        acl=table.get("acl", _nonempty_string, defaults.acl),
        metadata=table.get("metadata", _string_table, defaults.metadata),
    )
    if settings.endpoint_url is not None and not re.match(r"^https?://", settings.endpoint_url):
        table.problem("endpoint_url", "must start with http:// or https://")
    elif settings.endpoint_url is not None and "@" in urlsplit(settings.endpoint_url).netloc:
        # The value is not repeated: it holds a secret, and this message reaches logs.
        table.problem(
            "endpoint_url",
            "must not contain user:password@ (it would reach logs and status output); put "
            "credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, e.g. "
            "/etc/ingest-agent/environment) or in a profile",
        )
    table.finish()
    return settings


def _read_upload(table: _Table) -> UploadSettings:
    defaults = UploadSettings()
    part_size = _size_between(MIN_PART_SIZE, MAX_PART_SIZE)
    settings = UploadSettings(
        concurrency=table.get("concurrency", _integer(1, 64), defaults.concurrency),
        part_size=table.get("part_size", part_size, defaults.part_size),
        multipart_threshold=table.get(
            "multipart_threshold", part_size, defaults.multipart_threshold
        ),
        max_bandwidth=table.get("max_bandwidth", parse_size, defaults.max_bandwidth),
        max_memory=table.get("max_memory", parse_size, defaults.max_memory),
        retries=table.get("retries", _integer(0, 100), defaults.retries),
        retry_delay=table.get("retry_delay", parse_duration, defaults.retry_delay),
        failed_retry_delay=table.get(
            "failed_retry_delay", parse_duration, defaults.failed_retry_delay
        ),
        connect_timeout=table.get("connect_timeout", parse_duration, defaults.connect_timeout),
        read_timeout=table.get("read_timeout", parse_duration, defaults.read_timeout),
        windows=_read_windows(table),
    )
    if settings.max_memory < settings.part_size:
        table.problem("max_memory", f"must be at least part_size ({settings.part_size} bytes)")
    table.finish()
    return settings


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, got {value!r}")
    return seconds


def _listen_address(value: Any) -> tuple[str, int]:
    text = _string(value).strip()
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'{value!r} must be HOST:PORT, e.g. "127.0.0.1:9464"')
    return host, int(port)


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
        return ("/bin/sh", "-c", value)
    argv = _string_list(value)
    if not argv or not argv[0]:
        raise ValueError("must be a command line string or a non-empty list of arguments")
    return argv


def _read_status(table: _Table) -> StatusSettings:
    defaults = StatusSettings()
    settings = StatusSettings(
        ready_warning=table.get("ready_warning", _positive_duration, defaults.ready_warning),
        stalled_warning=table.get("stalled_warning", _positive_duration, defaults.stalled_warning),
    )
    table.finish()
    return settings


def _read_metrics(table: _Table) -> MetricsSettings:
    defaults = MetricsSettings()
    textfile = table.get("textfile", _nonempty_string, None)
    settings = MetricsSettings(
        listen=table.get("listen", _listen_address, defaults.listen),
        textfile=Path(textfile) if textfile else defaults.textfile,
        interval=table.get("interval", _positive_duration, defaults.interval),
    )
    if settings.textfile is not None:
        if not settings.textfile.is_absolute():
            table.problem("textfile", f"{textfile!r} must be an absolute path")
        elif not settings.textfile.name.endswith(".prom"):
            table.problem("textfile", "must end in .prom (the textfile collector reads only those)")
    table.finish()
    return settings


def _read_fleet(table: _Table) -> FleetSettings:
    defaults = FleetSettings()
    settings = FleetSettings(interval=table.get("interval", parse_duration, defaults.interval))
    if 0 < settings.interval < 1 or settings.interval < 0:
        table.problem("interval", "must be 0 (off) or at least 1 second")
    table.finish()
    return settings


def _read_hooks(table: _Table) -> HooksSettings:
    defaults = HooksSettings()
    settings = HooksSettings(
        on_uploaded=table.get("on_uploaded", _command, defaults.on_uploaded),
        timeout=table.get("timeout", _positive_duration, defaults.timeout),
    )
    table.finish()
    return settings


def _layout(value: Any) -> Layout:
    return Layout.parse(_string(value))


def _key_template(value: Any) -> str:
    text = _nonempty_string(value).strip("/")
    template_fields(text)
    return text


def _days(value: Any) -> frozenset[int]:
    names = _string_list(value)
    unknown = [name for name in names if name.lower()[:3] not in DAY_NAMES]
    if unknown or not names:
        raise ValueError(f'expected day names such as ["mon", "fri"], got {value!r}')
    return frozenset(DAY_NAMES.index(name.lower()[:3]) for name in names)


def _read_windows(upload: _Table) -> tuple[Window, ...]:
    """The `[[upload.window]]` tables: time windows with their own limit, or a pause."""
    upload.seen.add("window")
    raw = upload.data.get("window", [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        upload.problem("window", "must be written as [[upload.window]] tables")
        return ()
    # start and end are required; 0 is the bandwidth default (unlimited)
    defaults = Window(start=0, end=0, max_bandwidth=0)
    windows: list[Window] = []
    for index, item in enumerate(raw):
        table = _Table(item, f"upload.window[{index}]", upload.file, upload.problems)
        start = table.require("start", lambda v: parse_clock(_string(v)), defaults.start)
        end = table.require("end", lambda v: parse_clock(_string(v)), defaults.end)
        window = Window(
            start=start,
            end=end,
            max_bandwidth=table.get("max_bandwidth", parse_size, defaults.max_bandwidth),
            pause=table.get("pause", _boolean, defaults.pause),
            days=table.get("days", _days, defaults.days),
        )
        if start == end and "start" in item and "end" in item:
            table.problem("end", "must differ from start")
        table.finish()
        windows.append(window)
    return tuple(windows)


def _read_source(table: _Table) -> SourceSettings:
    defaults = SourceSettings(name="", path=Path())  # name and path are required
    path_text = table.require("path", _nonempty_string, "")
    layout = table.get("layout", _layout, defaults.layout)
    depth = table.get(
        "session_depth", _integer(1, 16), layout.depth if layout else defaults.session_depth
    )
    if layout is not None and depth != layout.depth:
        table.problem(
            "session_depth",
            f"is {depth} but layout {layout.pattern!r} has {layout.depth} levels; drop one",
        )
    settings = SourceSettings(
        name=table.require("name", _source_name, defaults.name),
        path=Path(path_text),
        session_depth=depth,
        quiet_period=table.get("quiet_period", parse_duration, defaults.quiet_period),
        marker=table.get("marker", _nonempty_string, defaults.marker),
        required=table.get("required", _string_list, defaults.required),
        min_age=table.get("min_age", parse_duration, defaults.min_age),
        exclude=table.get("exclude", _string_list, defaults.exclude),
        watch=table.get("watch", _choice(WATCH_MODES), defaults.watch),
        poll_interval=table.get("poll_interval", parse_duration, defaults.poll_interval),
        metadata=table.get("metadata", _string_table, defaults.metadata),
        layout=layout,
        key_template=table.get("key_template", _key_template, defaults.key_template),
        strict_names=table.get("strict_names", _boolean, defaults.strict_names),
        check_open_files=table.get("check_open_files", _boolean, defaults.check_open_files),
        upload_while_growing=table.get(
            "upload_while_growing", _boolean, defaults.upload_while_growing
        ),
        growing_part_size=table.get(
            "growing_part_size",
            _size_between(MIN_PART_SIZE, MAX_PART_SIZE),
            defaults.growing_part_size,
        ),
    )
    _check_key_template(table, settings)
    if path_text:
        if not settings.path.is_absolute():
            table.problem("path", f"{path_text!r} must be an absolute path")
        elif not settings.path.is_dir():
            table.problem(
                "path",
                f"{path_text} does not exist or is not a directory; create it or fix the path",
            )
        elif not os.access(settings.path, os.R_OK | os.X_OK):
            table.problem("path", f"{path_text} is not readable by this user")
    table.finish()
    return settings


def _check_key_template(table: _Table, source: SourceSettings) -> None:
    """Every field of the key template must have a value, and the template must keep
    sessions apart (name the session path or every layout field)."""
    try:
        used = template_fields(source.key_template)
    except ValueError:
        return  # already reported
    layout_fields = source.layout.fields if source.layout else ()
    clash = sorted(set(layout_fields) & set(source.metadata))
    if clash:
        table.problem("metadata", f"{', '.join(clash)} is also a layout field; rename one")
    known = set(BUILTIN_KEY_FIELDS) | set(layout_fields) | set(source.metadata)
    unknown = [name for name in used if name not in known]
    if unknown:
        table.problem(
            "key_template",
            f"{{{unknown[0]}}} is not a field; use {', '.join(sorted(known))} "
            "(layout fields and metadata keys included)",
        )
    elif "path" not in used and not (layout_fields and set(layout_fields) <= set(used)):
        table.problem(
            "key_template",
            "must contain {path} or every layout field, or two sessions would share keys",
        )


def settings_from_mapping(data: Mapping[str, Any], file: str) -> Settings:
    """Given parsed TOML, return validated `Settings`. Raise ConfigError with every problem."""
    problems: list[ConfigProblem] = []
    root = _Table(data, "", file, problems)

    def table_at(key: str, required: bool) -> Mapping[str, Any]:
        root.seen.add(key)
        value = data.get(key)
        if value is None:
            if required:
                problems.append(ConfigProblem(file, f"[{key}]", "table is required"))
            return {}
        if not isinstance(value, dict):
            problems.append(ConfigProblem(file, key, "must be a table, e.g. [" + key + "]"))
            return {}
        return value

    agent = _read_agent(_Table(table_at("agent", False), "agent", file, problems))
    destination = _read_destination(
        _Table(table_at("destination", True), "destination", file, problems)
    )
    upload = _read_upload(_Table(table_at("upload", False), "upload", file, problems))
    status = _read_status(_Table(table_at("status", False), "status", file, problems))
    metrics = _read_metrics(_Table(table_at("metrics", False), "metrics", file, problems))
    fleet = _read_fleet(_Table(table_at("fleet", False), "fleet", file, problems))
    hooks = _read_hooks(_Table(table_at("hooks", False), "hooks", file, problems))

    root.seen.add("source")
    raw_sources = data.get("source", [])
    sources: list[SourceSettings] = []
    if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
        problems.append(ConfigProblem(file, "source", "must be written as [[source]] tables"))
        raw_sources = []
    if not raw_sources:
        problems.append(ConfigProblem(file, "[[source]]", "at least one source is required"))
    for index, raw in enumerate(raw_sources):
        sources.append(_read_source(_Table(raw, f"source[{index}]", file, problems)))
    names = [source.name for source in sources if source.name]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.append(ConfigProblem(file, "source.name", f"{name!r} is used more than once"))
    root.finish()

    if problems:
        raise ConfigError(problems)
    return Settings(
        config_path=Path(file),
        agent=agent,
        destination=destination,
        upload=upload,
        sources=tuple(sources),
        status=status,
        metrics=metrics,
        fleet=fleet,
        hooks=hooks,
    )


def default_config_path() -> Path:
    """The config path used when --config is not given: $AGENT_CONFIG, else the default."""
    return Path(os.environ.get("AGENT_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(path: Path) -> Settings:
    """Given a TOML file path, return validated `Settings`. Raise ConfigError otherwise."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            [ConfigProblem(str(path), "-", "file not found; pass --config or set AGENT_CONFIG")]
        ) from None
    except PermissionError:
        raise ConfigError(
            [ConfigProblem(str(path), "-", "permission denied reading the file")]
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([ConfigProblem(str(path), "-", f"not valid TOML: {error}")]) from None
    return settings_from_mapping(data, str(path))
