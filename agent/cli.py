"""`agentctl`: parses arguments, calls the library, formats output, maps errors to exit codes.

No policy and no SQL here. The exit codes, and the output of the long commands (a sync pass,
its dry run, the fleet table), are in agent/cli_output.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__, health, lock, logs
from agent.actions import control
from agent.cli_output import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    fleet_table,
    sync_dry_run,
    sync_pass,
)
from agent.config import (
    DestinationSettings,
    Settings,
    UploadSettings,
    default_config_path,
    load_settings,
)
from agent.errors import ConfigError, StateError, TransferError
from agent.redact import SECRETS, redact
from agent.report import status_lines, status_report, unknown_report
from agent.sessions import SESSION_STATES
from agent.state import SessionRecord, State
from agent.units import human_bytes, iso


def session_json(record: SessionRecord) -> dict[str, Any]:
    """The contract's fields for one session, plus a few more."""
    return {
        "id": record.id,
        "source": record.source,
        "path": record.path,
        "state": record.state,
        "files": record.files,
        "bytes": record.bytes,
        "uploaded_bytes": record.uploaded_bytes,
        "key_prefix": record.key_prefix,
        "manifest_key": record.manifest_key,
        "manifest_revision": record.manifest_revision,
        "detected_at": iso(record.detected_at),
        "completed_at": iso(record.completed_at),
        "uploaded_at": iso(record.uploaded_at),
        "error": redact(record.error) if record.error else None,
        "reason": redact(record.reason) if record.reason else None,
        "attempts": record.attempts,
        "next_attempt_at": iso(record.next_attempt_at),
        "local_missing": record.local_missing,
        "metadata": record.metadata,
    }


def _print_config_error(error: ConfigError, config: str | None) -> None:
    """Print every problem; one found after loading (a profile no AWS file holds, say) has no
    file name of its own and is given the configuration file's."""
    print(f"configuration invalid ({len(error.problems)} problem(s)):", file=sys.stderr)
    for problem in error.problems:
        if config and not problem.file:
            print(f"  {dataclasses.replace(problem, file=config)}", file=sys.stderr)
        else:
            print(f"  {problem}", file=sys.stderr)


def _settings(arguments: argparse.Namespace) -> Settings:
    return load_settings(Path(arguments.config))


# --- commands -----------------------------------------------------------------------------


def cmd_check_config(arguments: argparse.Namespace) -> int:
    """Validate the config; print every problem."""
    settings = _settings(arguments)
    if arguments.json:
        print(json.dumps({"valid": True, "sources": [s.name for s in settings.sources]}))
    else:
        print(
            f"{settings.config_path}: valid; {len(settings.sources)} source(s): "
            + ", ".join(f"{s.name} ({s.path})" for s in settings.sources)
        )
    return EXIT_OK


def cmd_run(arguments: argparse.Namespace) -> int:
    """The daemon, in the foreground."""
    from agent.service import Daemon  # noqa: PLC0415 - only `run` pays for watchdog

    settings = _settings(arguments)
    logs.configure(settings.agent.log_level, target=settings.agent.log_target)
    # When the watchdog kills a hung daemon (SIGABRT), every thread's stack goes to stderr,
    # which systemd keeps in the journal: the hang can be diagnosed afterwards.
    faulthandler.enable()
    daemon = Daemon(settings)
    daemon.install_signal_handlers()
    return daemon.run()


def cmd_sync(arguments: argparse.Namespace) -> int:
    """One pass: scan, upload what is ready, summarise."""
    settings = _settings(arguments)
    logs.configure(settings.agent.log_level, target=settings.agent.log_target)
    if arguments.dry_run:
        return sync_dry_run(settings, arguments.json)
    held = lock.acquire(settings.agent.state_dir, "sync")
    try:
        return sync_pass(settings, arguments.json)
    finally:
        logs.flush_repeats(final=True)
        held.release()


def cmd_status(arguments: argparse.Namespace) -> int:
    """Health, with Nagios exit codes."""
    try:
        settings = _settings(arguments)
        state = State.open(settings.state_db_path, create=False)
    except (ConfigError, StateError) as error:
        report = unknown_report(str(error).replace("\n", "; "))
    else:
        try:
            report = status_report(settings, state)
        finally:
            state.close()
    code = int(report.pop("code"))
    if arguments.json:
        print(json.dumps(report))
    else:
        print("\n".join(status_lines(report)))
    return code


def cmd_sessions(arguments: argparse.Namespace) -> int:
    """One row per session."""
    settings = _settings(arguments)
    records: list[SessionRecord] = []
    # No database yet is no sessions yet; a database that cannot be read is an error
    # (StateError, exit 1), never an empty list.
    if settings.state_db_path.exists():
        with State.open(settings.state_db_path, create=False) as state:
            records = state.sessions.all(arguments.state)
    if arguments.json:
        print(json.dumps([session_json(record) for record in records], indent=None))
        return EXIT_OK
    if not records:
        print("no sessions yet")
        return EXIT_OK
    # Names are shown escaped: a bidi override or a zero-width character in a folder name
    # would otherwise reorder or hide what the operator reads (JSON keeps the real name).
    shown = {record.id: logs.plain(record.id) for record in records}
    width = max(len(name) for name in shown.values())
    print(f"{'SESSION':<{width}}  {'STATE':<9}  {'FILES':>6}  {'SIZE':>10}  {'DONE':>5}  NOTE")
    for record in records:
        done = 100 * record.uploaded_bytes / record.bytes if record.bytes else 100.0
        note = redact(record.error or record.reason or (record.manifest_key or ""))
        if record.local_missing:
            note = "local directory gone; " + note
        print(
            f"{shown[record.id]:<{width}}  {record.state:<9}  {record.files:>6}  "
            f"{human_bytes(record.bytes):>10}  {done:>4.0f}%  {logs.plain(note)}"
        )
    return EXIT_OK


def cmd_verify(arguments: argparse.Namespace) -> int:
    """Compare S3 with the database and the local files; exit 1 on any difference."""
    from agent.actions.verify import UnknownSessionError, verify  # noqa: PLC0415 - see cli_output

    settings = _settings(arguments)
    with State.open(settings.state_db_path, create=False) as state:
        try:
            checks = verify(
                settings,
                state,
                arguments.session,
                quick=arguments.quick,
                download=arguments.download,
            )
        except UnknownSessionError:
            print(
                f"no session {arguments.session!r}; `agentctl sessions` lists the ids",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    differences = [d for check in checks for d in check.differences]
    if arguments.json:
        print(
            json.dumps(
                {
                    "sessions": len(checks),
                    "files": sum(c.files for c in checks),
                    "bytes_read": sum(c.bytes_read for c in checks),
                    "local_unchecked": sum(len(c.local_unchecked) for c in checks),
                    "differences": [vars(d) for d in differences],
                }
            )
        )
    else:
        for check in checks:
            verdict = f"{len(check.differences)} difference(s)" if check.differences else "matches"
            gone = f", {len(check.local_unchecked)} gone locally" if check.local_unchecked else ""
            print(f"{check.session}: {check.files} file(s){gone}: {verdict}")
            for difference in check.differences:
                print(f"  {difference.path} ({difference.key}): {difference.problem}")
        print(
            f"verified {len(checks)} session(s), {sum(c.files for c in checks)} file(s): "
            + (f"{len(differences)} difference(s)" if differences else "S3 matches")
        )
    return EXIT_FAILED if differences else EXIT_OK


def _report(arguments: argparse.Namespace, done: bool, message: str) -> int:
    if arguments.json:
        print(json.dumps({"done": done, "message": message}))
    else:
        print(message, file=sys.stdout if done else sys.stderr)
    return EXIT_OK if done else EXIT_FAILED


def cmd_pause(arguments: argparse.Namespace) -> int:
    """Stop uploading (persists across restarts) until `resume`."""
    settings = _settings(arguments)
    with State.open(settings.state_db_path) as state:
        return _report(arguments, *control.pause(settings, state))


def cmd_resume(arguments: argparse.Namespace) -> int:
    """Undo `pause`."""
    settings = _settings(arguments)
    with State.open(settings.state_db_path) as state:
        return _report(arguments, *control.resume(state))


def cmd_retry(arguments: argparse.Namespace) -> int:
    """Make a failed session ready again at once."""
    settings = _settings(arguments)
    with State.open(settings.state_db_path, create=False) as state:
        return _report(arguments, *control.retry(state, arguments.session))


def cmd_rescan(arguments: argparse.Namespace) -> int:
    """Ask the running daemon to rescan every source now."""
    settings = _settings(arguments)
    with State.open(settings.state_db_path, create=False) as state:
        return _report(arguments, *control.rescan(settings, state))


def cmd_doctor(arguments: argparse.Namespace) -> int:
    """Check that this machine can ingest: exit 0 all good, 1 problems, 2 bad config."""
    from agent import doctor  # noqa: PLC0415 - only doctor pays for watchdog and the probes

    try:
        settings = _settings(arguments)
    except ConfigError as error:
        if not arguments.json:
            raise  # reported like every command's config error
        print(json.dumps(doctor.config_report(error)))
        return EXIT_CONFIG
    checks = doctor.run_checks(settings)
    if arguments.json:
        print(json.dumps(doctor.report_json(checks)))
    else:
        encoding = sys.stdout.encoding or "ascii"
        try:
            "✔✘…".encode(encoding)
            ascii_only = False
        except (UnicodeEncodeError, LookupError):
            ascii_only = True
        for line in doctor.render(checks, ascii_only=ascii_only):
            print(line)
    return doctor.exit_code(checks)


def cmd_demo(arguments: argparse.Namespace) -> int:
    """The zero-setup demonstration."""
    from agent.demo import run_demo  # noqa: PLC0415 - moto is an optional extra

    return run_demo(sessions=arguments.sessions, keep_running=arguments.keep_running)


def cmd_fleet(arguments: argparse.Namespace) -> int:
    """Every rig's beat in the bucket, judged; exit code of the worst rig."""
    settings: Settings | None = None
    if arguments.bucket is None or Path(arguments.config).exists():
        try:
            settings = _settings(arguments)
        except ConfigError:
            if arguments.bucket is None:
                raise
    if settings is not None:
        destination = settings.destination
        upload = settings.upload
        # Rigs usually write under prefixes of their own ("lab/rig-01"): look from the parent.
        prefix = destination.prefix.rpartition("/")[0]
    else:
        destination = DestinationSettings(bucket="")
        upload = UploadSettings()
        prefix = ""
    destination = dataclasses.replace(
        destination,
        bucket=arguments.bucket or destination.bucket,
        endpoint_url=arguments.endpoint_url or destination.endpoint_url,
        region=arguments.region or destination.region,
        profile=arguments.profile or destination.profile,
    )
    if arguments.prefix is not None:
        prefix = arguments.prefix.strip("/")
    return fleet_table(destination, upload, prefix, arguments.json)


# --- parsing ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="agentctl",
        description="Upload finished acquisition sessions from instrument folders to S3.",
    )
    parser.add_argument("--version", action="version", version=f"ingest-agent {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=str(default_config_path()),
        help="config file (default: $AGENT_CONFIG or /etc/ingest-agent/config.toml)",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    add("run", cmd_run, "run the daemon in the foreground (what systemd starts)")
    sync = add("sync", cmd_sync, "one pass: upload every session that is complete, then exit")
    sync.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be uploaded and where; touch neither S3 nor the database",
    )
    add(
        "status",
        cmd_status,
        "health for humans and monitoring (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
    )
    sessions = add("sessions", cmd_sessions, "one row per session")
    sessions.add_argument("--state", choices=SESSION_STATES, help="only sessions in this state")
    verify = add(
        "verify",
        cmd_verify,
        "compare S3 with the state database and local files (exit 1 on any difference)",
    )
    verify.add_argument("session", nargs="?", help="one session id (default: every uploaded one)")
    verify.add_argument(
        "--quick", action="store_true", help="compare local sizes and mtimes, do not re-read files"
    )
    verify.add_argument(
        "--download", action="store_true", help="also read every object back and checksum it"
    )
    add("pause", cmd_pause, "stop uploading until `resume` (kept across restarts)")
    add("resume", cmd_resume, "undo `pause`")
    retry = add("retry", cmd_retry, "upload a failed session again now")
    retry.add_argument("session", help="the session id, as `agentctl sessions` prints it")
    add("rescan", cmd_rescan, "ask the running daemon to rescan every source now")
    add("check-config", cmd_check_config, "validate the config, printing every problem")
    add(
        "doctor",
        cmd_doctor,
        "check credentials, bucket access, server features, clock, state dir, sources, "
        "inotify limits and the systemd unit (exit 0 all good, 1 problems, 2 bad config)",
    )
    fleet_parser = add(
        "fleet",
        cmd_fleet,
        "every rig's status as its agent last wrote it to the bucket (exit code of the worst "
        "rig; a rig silent for 3 beat intervals is CRITICAL)",
    )
    fleet_parser.add_argument("--bucket", help="the bucket (default: the config's)")
    fleet_parser.add_argument(
        "--prefix",
        help="look for beats under this prefix and two levels below (default: the parent of "
        "the config's prefix)",
    )
    fleet_parser.add_argument("--endpoint-url", help="S3-compatible server (default: config's)")
    fleet_parser.add_argument("--region", help="region (default: the config's)")
    fleet_parser.add_argument("--profile", help="AWS profile (default: the config's)")
    demo = add("demo", cmd_demo, "demonstration: local S3 server, simulated instrument, live agent")
    demo.add_argument("--sessions", type=int, default=3, help="how many sessions to simulate")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep running after the simulated sessions are uploaded, until Ctrl-C",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `agentctl`; returns the exit code."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    # Whatever a command prints, the credentials it runs with are masked in it.
    SECRETS.add_environment()
    try:
        code: int = arguments.handler(arguments)
    except (lock.AlreadyRunningError, lock.LockError) as error:
        print(error, file=sys.stderr)
        return EXIT_FAILED
    except ConfigError as error:
        _print_config_error(error, getattr(arguments, "config", None))
        return health.UNKNOWN if arguments.command == "status" else EXIT_CONFIG
    except StateError as error:
        print(f"state database: {error}", file=sys.stderr)
        return EXIT_FAILED
    except TransferError as error:
        print(f"S3: {redact(str(error))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    return code
