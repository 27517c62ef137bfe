"""Configuration: TOML read once into frozen dataclasses, every problem reported together.

Given a path, `load_settings` returns `Settings` or raises `ConfigError` listing every
problem found (file, key, what is wrong, what is allowed). Nothing here creates files or
directories: a bad configuration leaves no trace.

This module reads each table and checks what spans keys (limits that depend on each other,
paths, key templates); the dataclasses are in agent/settings.py (re-exported here: import
them from `agent.config`), and the converters of single values in agent/config_values.py.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent import config_values as values
from agent.errors import ConfigError, ConfigProblem
from agent.planning import BUILTIN_KEY_FIELDS, MAX_PART_SIZE, MIN_PART_SIZE, template_fields
from agent.settings import (
    DEFAULT_EXCLUDES,
    DEFAULT_STATE_DIR,
    AgentSettings,
    DestinationSettings,
    FleetSettings,
    HooksSettings,
    MetricsSettings,
    Settings,
    SourceSettings,
    StatusSettings,
    UploadSettings,
)
from agent.throttle import Window, parse_clock

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "CONDITIONAL_WRITE_MODES",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_EXCLUDES",
    "DEFAULT_STATE_DIR",
    "LOG_LEVELS",
    "LOG_TARGETS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "STORAGE_CLASSES",
    "WATCH_MODES",
    "AgentSettings",
    "DestinationSettings",
    "FleetSettings",
    "HooksSettings",
    "MetricsSettings",
    "Settings",
    "SourceSettings",
    "StatusSettings",
    "UploadSettings",
    "default_config_path",
    "load_settings",
    "settings_from_mapping",
]

DEFAULT_CONFIG_PATH = "/etc/ingest-agent/config.toml"
CHECKSUM_ALGORITHMS = ("crc32c", "crc32", "sha256")
WATCH_MODES = ("auto", "inotify", "poll", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_TARGETS = ("auto", "journald", "console", "json")
CONDITIONAL_WRITE_MODES = ("auto", "on", "off")
# S3's storage classes, spelled as S3 expects them (a value in another case is respelled).
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "OUTPOSTS",
    "SNOW",
    "EXPRESS_ONEZONE",
)


def _read_agent(table: values.Table) -> AgentSettings:
    defaults = AgentSettings()
    settings = AgentSettings(
        name=table.get("name", values.source_name, defaults.name),
        state_dir=table.get("state_dir", values.path, defaults.state_dir),
        log_level=table.get("log_level", values.choice(LOG_LEVELS), defaults.log_level),
        log_target=table.get("log_target", values.choice(LOG_TARGETS), defaults.log_target),
        # 0 would rescan (or beat) in a busy loop.
        rescan_interval=table.get(
            "rescan_interval", values.duration_at_least(1.0), defaults.rescan_interval
        ),
        heartbeat_interval=table.get(
            "heartbeat_interval", values.positive_duration, defaults.heartbeat_interval
        ),
        heartbeat_stale=table.get(
            "heartbeat_stale", values.parse_duration, defaults.heartbeat_stale
        ),
    )
    if settings.heartbeat_stale <= settings.heartbeat_interval:
        table.problem("heartbeat_stale", "must be longer than heartbeat_interval")
    if not settings.state_dir.is_absolute():
        home = " (~ is not expanded)" if str(settings.state_dir).startswith("~") else ""
        table.problem(
            "state_dir",
            f"{str(settings.state_dir)!r} is relative{home}: where it points would depend on "
            f"the directory the agent is started from; give an absolute path, e.g. "
            f"{DEFAULT_STATE_DIR}",
        )
    elif settings.state_dir.exists() and not settings.state_dir.is_dir():
        table.problem("state_dir", f"{settings.state_dir} exists and is not a directory")
    table.finish()
    return settings


def _read_destination(table: values.Table) -> DestinationSettings:
    defaults = DestinationSettings(bucket="")  # the bucket has no default: it is required
    settings = DestinationSettings(
        bucket=table.require("bucket", values.bucket_name, defaults.bucket),
        prefix=table.get("prefix", values.prefix, defaults.prefix),
        endpoint_url=table.get("endpoint_url", values.nonempty_string, defaults.endpoint_url),
        region=table.get("region", values.nonempty_string, defaults.region),
        profile=table.get("profile", values.nonempty_string, defaults.profile),
        checksum=table.get("checksum", values.choice(CHECKSUM_ALGORITHMS), defaults.checksum),
        server_checksums=table.get("server_checksums", values.boolean, defaults.server_checksums),
        conditional_writes=table.get(
            "conditional_writes",
            values.choice(CONDITIONAL_WRITE_MODES),
            defaults.conditional_writes,
        ),
        storage_class=table.get(
            "storage_class",
            values.spelled_choice(STORAGE_CLASSES, "an S3 storage class"),
            defaults.storage_class,
        ),
        acl=table.get("acl", values.nonempty_string, defaults.acl),
        metadata=table.get("metadata", values.header_metadata, defaults.metadata),
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


def _read_upload(table: values.Table) -> UploadSettings:
    defaults = UploadSettings()
    part_size = values.size_between(MIN_PART_SIZE, MAX_PART_SIZE)
    concurrency = table.get("concurrency", values.integer(1, 64), defaults.concurrency)
    size_of_part = table.get("part_size", part_size, defaults.part_size)
    settings = UploadSettings(
        concurrency=concurrency,
        part_size=size_of_part,
        multipart_threshold=table.get(
            "multipart_threshold", part_size, defaults.multipart_threshold
        ),
        max_bandwidth=table.get("max_bandwidth", values.parse_size, defaults.max_bandwidth),
        # Unset, it holds one part per worker (and no less than the default): more only
        # grows the memory, not the speed (bench: 2 x 256 MiB, same wall at 64 and 256 MiB).
        max_memory=table.get(
            "max_memory",
            values.parse_size,
            max(defaults.max_memory, concurrency * size_of_part),
        ),
        retries=table.get("retries", values.integer(0, 100), defaults.retries),
        retry_delay=table.get("retry_delay", values.parse_duration, defaults.retry_delay),
        # 0 would retry a failed session in a busy loop, and a 0 timeout fails every request.
        failed_retry_delay=table.get(
            "failed_retry_delay", values.positive_duration, defaults.failed_retry_delay
        ),
        connect_timeout=table.get(
            "connect_timeout", values.positive_duration, defaults.connect_timeout
        ),
        read_timeout=table.get("read_timeout", values.positive_duration, defaults.read_timeout),
        direct_requests=table.get("direct_requests", values.boolean, defaults.direct_requests),
        windows=_read_windows(table),
    )
    if settings.max_memory < settings.part_size:
        table.problem("max_memory", f"must be at least part_size ({settings.part_size} bytes)")
    table.finish()
    return settings


def _read_status(table: values.Table) -> StatusSettings:
    defaults = StatusSettings()
    settings = StatusSettings(
        ready_warning=table.get("ready_warning", values.positive_duration, defaults.ready_warning),
        stalled_warning=table.get(
            "stalled_warning", values.positive_duration, defaults.stalled_warning
        ),
    )
    table.finish()
    return settings


def _read_metrics(table: values.Table) -> MetricsSettings:
    defaults = MetricsSettings()
    textfile = table.get("textfile", values.nonempty_string, None)
    settings = MetricsSettings(
        listen=table.get("listen", values.listen_address, defaults.listen),
        textfile=Path(textfile) if textfile else defaults.textfile,
        interval=table.get("interval", values.positive_duration, defaults.interval),
    )
    if settings.textfile is not None:
        if not settings.textfile.is_absolute():
            table.problem("textfile", f"{textfile!r} must be an absolute path")
        elif not settings.textfile.name.endswith(".prom"):
            table.problem("textfile", "must end in .prom (the textfile collector reads only those)")
    table.finish()
    return settings


def _read_fleet(table: values.Table) -> FleetSettings:
    defaults = FleetSettings()
    settings = FleetSettings(
        interval=table.get("interval", values.parse_duration, defaults.interval)
    )
    if 0 < settings.interval < 1 or settings.interval < 0:
        table.problem("interval", "must be 0 (off) or at least 1 second")
    table.finish()
    return settings


def _read_hooks(table: values.Table) -> HooksSettings:
    defaults = HooksSettings()
    settings = HooksSettings(
        on_uploaded=table.get("on_uploaded", values.command, defaults.on_uploaded),
        timeout=table.get("timeout", values.positive_duration, defaults.timeout),
    )
    table.finish()
    return settings


def _read_windows(upload: values.Table) -> tuple[Window, ...]:
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
        table = values.Table(item, f"upload.window[{index}]", upload.file, upload.problems)
        start = table.require("start", lambda v: parse_clock(values.string(v)), defaults.start)
        end = table.require("end", lambda v: parse_clock(values.string(v)), defaults.end)
        window = Window(
            start=start,
            end=end,
            max_bandwidth=table.get("max_bandwidth", values.parse_size, defaults.max_bandwidth),
            pause=table.get("pause", values.boolean, defaults.pause),
            days=table.get("days", values.days, defaults.days),
        )
        if start == end and "start" in item and "end" in item:
            table.problem("end", "must differ from start")
        table.finish()
        windows.append(window)
    return tuple(windows)


def _read_source(table: values.Table) -> SourceSettings:
    defaults = SourceSettings(name="", path=Path())  # name and path are required
    path_text = table.require("path", values.nonempty_string, "")
    layout = table.get("layout", values.layout, defaults.layout)
    depth = table.get(
        "session_depth", values.integer(1, 16), layout.depth if layout else defaults.session_depth
    )
    if layout is not None and depth != layout.depth:
        table.problem(
            "session_depth",
            f"is {depth} but layout {layout.pattern!r} has {layout.depth} levels; drop one",
        )
    settings = SourceSettings(
        name=table.require("name", values.source_name, defaults.name),
        path=Path(path_text),
        session_depth=depth,
        quiet_period=table.get("quiet_period", values.parse_duration, defaults.quiet_period),
        marker=table.get("marker", values.nonempty_string, defaults.marker),
        required=table.get("required", values.string_list, defaults.required),
        min_age=table.get("min_age", values.parse_duration, defaults.min_age),
        exclude=table.get("exclude", values.string_list, defaults.exclude),
        watch=table.get("watch", values.choice(WATCH_MODES), defaults.watch),
        poll_interval=table.get("poll_interval", values.positive_duration, defaults.poll_interval),
        metadata=table.get("metadata", values.text_metadata, defaults.metadata),
        layout=layout,
        key_template=table.get("key_template", values.key_template, defaults.key_template),
        strict_names=table.get("strict_names", values.boolean, defaults.strict_names),
        check_open_files=table.get("check_open_files", values.boolean, defaults.check_open_files),
        upload_while_growing=table.get(
            "upload_while_growing", values.boolean, defaults.upload_while_growing
        ),
        growing_part_size=table.get(
            "growing_part_size",
            values.size_between(MIN_PART_SIZE, MAX_PART_SIZE),
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


def _check_key_template(table: values.Table, source: SourceSettings) -> None:
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


def _check_overlaps(
    sources: list[SourceSettings], file: str, problems: list[ConfigProblem]
) -> None:
    """Two sources on one folder, or one inside another, would upload every file twice:
    report the inner one (or the later one), naming both. Paths are compared resolved
    (symlinks followed as far as they exist); relative ones are reported elsewhere."""

    def shown(source: SourceSettings, resolved: Path) -> str:
        where = str(source.path)
        if resolved != source.path:
            where += f", which is {resolved}"
        return f"source {source.name!r} ({where})"

    placed: list[tuple[SourceSettings, Path]] = []
    for index, source in enumerate(sources):
        if not source.path.is_absolute():
            continue
        try:
            here = source.path.resolve(strict=False)
        except (OSError, RuntimeError):  # a symlink loop
            here = Path(os.path.normpath(source.path))
        for other_index, (other, there) in enumerate(placed):
            if here == there:
                inner, outer, inner_index, relation = source, other, index, "the same folder as"
            elif there in here.parents:
                inner, outer, inner_index, relation = source, other, index, "inside"
            elif here in there.parents:
                inner, outer, inner_index, relation = other, source, other_index, "inside"
            else:
                continue
            inner_path, outer_path = (here, there) if inner is source else (there, here)
            problems.append(
                ConfigProblem(
                    file,
                    f"source[{inner_index}].path",
                    f"{shown(inner, inner_path)} is {relation} {shown(outer, outer_path)}: "
                    "every file in it would be uploaded twice; remove one of the two sources "
                    "or give them folders apart",
                )
            )
        placed.append((source, here))


def settings_from_mapping(data: Mapping[str, Any], file: str) -> Settings:
    """Given parsed TOML, return validated `Settings`. Raise ConfigError with every problem."""
    problems: list[ConfigProblem] = []
    root = values.Table(data, "", file, problems)

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

    agent = _read_agent(values.Table(table_at("agent", False), "agent", file, problems))
    destination = _read_destination(
        values.Table(table_at("destination", True), "destination", file, problems)
    )
    upload = _read_upload(values.Table(table_at("upload", False), "upload", file, problems))
    status = _read_status(values.Table(table_at("status", False), "status", file, problems))
    metrics = _read_metrics(values.Table(table_at("metrics", False), "metrics", file, problems))
    fleet = _read_fleet(values.Table(table_at("fleet", False), "fleet", file, problems))
    hooks = _read_hooks(values.Table(table_at("hooks", False), "hooks", file, problems))

    root.seen.add("source")
    raw_sources = data.get("source", [])
    sources: list[SourceSettings] = []
    if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
        problems.append(ConfigProblem(file, "source", "must be written as [[source]] tables"))
        raw_sources = []
    if not raw_sources:
        problems.append(ConfigProblem(file, "[[source]]", "at least one source is required"))
    for index, raw in enumerate(raw_sources):
        sources.append(_read_source(values.Table(raw, f"source[{index}]", file, problems)))
    _check_overlaps(sources, file, problems)
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

    def refused(message: str) -> ConfigError:
        return ConfigError([ConfigProblem(str(path), "-", message)])

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise refused("file not found; pass --config or set AGENT_CONFIG") from None
    except PermissionError:
        raise refused("permission denied reading the file") from None
    except IsADirectoryError:
        raise refused(
            f"is a directory; pass the config file itself, e.g. {DEFAULT_CONFIG_PATH}"
        ) from None
    except OSError as error:
        raise refused(f"cannot be read: {error.strerror or error}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise refused(
            "starts with a byte order mark (U+FEFF), which TOML does not allow; save the "
            "file as UTF-8 without BOM"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise refused(
            f"not UTF-8 text: byte 0x{raw[error.start]:02x} at line {line}, column {column}; "
            "TOML files must be UTF-8: save the file as UTF-8 (or write that character in "
            "ASCII)"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise refused(f"not valid TOML: {error}") from None
    return settings_from_mapping(data, str(path))
