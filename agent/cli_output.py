"""`agentctl`'s exit codes, and the output of its long commands: sync, its dry run, and fleet.

Given settings that agent/cli.py has already parsed and loaded, each function here runs its
action, prints progress and a summary (text or JSON), and returns the exit code. Like the
rest of the CLI it holds no policy and no SQL. boto3 and the progress view are imported
inside the functions: `agentctl status`, run every minute by monitoring, must not pay for
them, and agent/cli.py imports this module at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import datetime
from typing import Any

from agent import health, logs
from agent.actions.control import live_daemon
from agent.config import DestinationSettings, Settings, UploadSettings
from agent.redact import redact
from agent.state import State
from agent.throttle import limit_at
from agent.units import human_bytes

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def sync_pass(settings: Settings, as_json: bool) -> int:
    """Given settings, upload every session that is due, with a progress view on stderr.

    Print the summary; return EXIT_FAILED if the daemon is running or a session failed.
    """
    # Imported here: `status`, run every minute by monitoring, must not pay for boto3.
    from agent import progress  # noqa: PLC0415
    from agent.actions.sync import SyncPass  # noqa: PLC0415

    with State.open(settings.state_db_path) as state:
        heartbeat = live_daemon(settings, state)
        if heartbeat is not None:
            print(
                f"the daemon is running (pid {heartbeat.pid}) and uploads on its own; "
                "stop it before running sync",
                file=sys.stderr,
            )
            return EXIT_FAILED
        run = SyncPass(settings, state)
        # A failure to clean up orphan uploads is logged (recovery_failed) and does not stop
        # the pass: each session's upload meets the same problem and records it as its reason.
        due = run.start()
        # From the sessions' kept totals: listing every pending file here held them all in
        # memory for the whole pass.
        totals = progress.Totals(*state.queries.pending_of([record.id for record in due]))
        view = progress.view_for(sys.stderr, as_json=as_json)
        if isinstance(view, progress.BarView):
            # Log lines go above the bar instead of through it.
            logs.configure(
                settings.agent.log_level, view.log_stream(), target=settings.agent.log_target
            )
        measure = progress.Measure(state.queries.backlog, lambda: run.store.limiter.taken)
        with progress.SyncProgress(totals, measure, view) as shown:
            for record in due:
                shown.session = record.id
                run.upload(record)
                logs.flush_repeats()  # summaries as windows end, not all at exit
        result = run.finish()
    files, size, seconds = result.files, result.bytes, result.seconds
    summary = {
        "sessions_uploaded": len(result.uploaded),
        "sessions_failed": len(result.failed),
        "sessions_waiting": result.waiting,
        "files": files,
        "bytes": size,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / seconds / 1e6, 2),
        "files_per_s": round(files / seconds, 2),
        "failed": result.failed,
        # Sessions never recorded or sent (unsafe or undecodable names): not failed, but
        # not uploaded either; status shows them too.
        "sessions_refused": len(result.refused),
        "refused": [{"session": name, "reason": reason} for name, reason in result.refused],
    }
    if as_json:
        print(json.dumps(summary))
    else:
        print(
            f"uploaded {len(result.uploaded)} session(s), {files} file(s), {human_bytes(size)} "
            f"in {seconds:.1f}s ({summary['mb_per_s']} MB/s, {summary['files_per_s']} files/s); "
            f"{result.waiting} session(s) still waiting; {len(result.failed)} failed"
            + (f"; {len(result.refused)} refused" if result.refused else "")
        )
        for session_id in result.failed:
            print(f"  failed: {session_id}")
        for name, reason in result.refused:
            print(logs.plain(f"  refused: {name}: {reason}"))
    return EXIT_FAILED if result.failed else EXIT_OK


def sync_dry_run(settings: Settings, as_json: bool) -> int:
    """Given settings, print what a sync would upload and where, and a time estimate.

    Touch neither S3 nor the database; return EXIT_OK.
    """
    from agent.actions.plan import plan  # noqa: PLC0415 - see sync_pass

    rows: list[dict[str, Any]] = [
        {
            "id": p.id,
            "state": p.state,
            "ready": p.ready,
            "reason": p.reason,
            "files": p.files,
            "bytes": p.bytes,
            "key_prefix": p.key_prefix,
            "keys": list(p.keys),
            "refused": [{"path": path, "reason": reason} for path, reason in p.refused],
        }
        for p in plan(settings, time.time())
    ]
    if as_json:
        print(json.dumps(rows))
        return EXIT_OK
    from agent import progress  # noqa: PLC0415 - only sync shows progress

    ready = [row for row in rows if row["ready"] and row["files"]]
    files_total = sum(int(r["files"]) for r in ready)
    bytes_total = sum(int(r["bytes"]) for r in ready)
    print(
        f"dry run: {len(ready)} session(s) would be uploaded, "
        f"{files_total} file(s), {human_bytes(bytes_total)}"
    )
    for row in rows:
        verdict = (
            "ready"
            if row["ready"]
            else "uploaded, nothing new"
            if row["state"] == "uploaded"
            else f"not ready ({row['reason']})"
        )
        print(
            f"  {row['id']}: {row['files']} file(s), {human_bytes(int(row['bytes']))} -> "
            f"s3://{settings.destination.bucket}/{row['key_prefix']}/  [{verdict}]"
        )
        for key in list(row["keys"])[:5] if row["ready"] else []:
            print(f"      {key}")
        if row["ready"] and len(row["keys"]) > 5:
            print(f"      ... and {len(row['keys']) - 5} more")
        for refusal in row["refused"]:
            print(f"      refused {refusal['path']!r}: {refusal['reason']}")
    # The limit sync would keep to: that of the time window in force now, as in sync_pass.
    limit = limit_at(settings.upload.windows, settings.upload.max_bandwidth, datetime.now())
    seconds = progress.upload_estimate(bytes_total, limit.max_bandwidth)
    estimate = (
        "unlimited bandwidth: no estimate"
        if seconds is None
        else f"estimated time at least {progress.format_duration(seconds)} at "
        f"{human_bytes(limit.max_bandwidth)}/s (the bandwidth limit in force now)"
    )
    print(
        f"total: {len(ready)} session(s), {files_total} file(s), "
        f"{human_bytes(bytes_total)}; {estimate}"
    )
    return EXIT_OK


def fleet_table(
    destination: DestinationSettings, upload: UploadSettings, prefix: str, as_json: bool
) -> int:
    """Given where the beats are, read and judge every rig's, print them as a table or JSON.

    Return the exit code of the worst rig, or UNKNOWN if the bucket cannot be listed.
    """
    import botocore.exceptions  # noqa: PLC0415 - see sync_pass

    from agent import fleet  # noqa: PLC0415
    from agent.transfer import make_client  # noqa: PLC0415

    upload = dataclasses.replace(upload, connect_timeout=5.0, read_timeout=15.0, concurrency=8)
    client = make_client(destination, upload)
    where = f"s3://{destination.bucket}/{prefix}"
    try:
        rigs = fleet.read_fleet(client, destination.bucket, prefix)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        message = f"cannot list {where}: {redact(str(error))}"
        if as_json:
            print(json.dumps({"state": "unknown", "summary": message, "rigs": []}))
        else:
            print(f"UNKNOWN - {message}")
        return health.UNKNOWN
    code = fleet.worst(rigs)
    if as_json:
        print(
            json.dumps(
                {
                    "state": health.NAMES[code],
                    "where": where,
                    "rigs": [rig.row() for rig in rigs],
                }
            )
        )
    else:
        print("\n".join(fleet.fleet_lines(rigs, where)))
    return code
