"""The outside programs of the comparison (bench/compare.py): a loopback moto S3 server, and
the command line of each tool under comparison for one sync of a local tree into one bucket.

Everything here only builds values (argument vectors, environments, config text), except
`serve_moto`, which is the server process itself: `python bench/peers.py serve-moto` prints
its port on stdout and serves until SIGTERM.

Every tool runs with its own defaults (the agent's `concurrency = 4`, aws-cli's 10 requests,
s5cmd's 256 workers, rclone's 4 transfers), as a lab would install it; each writes the same
keys: `{prefix}/{path relative to the tree}` (plus the agent's manifests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

TOOLS = ("agent", "aws", "s5cmd", "rclone")
PEERS = TOOLS[1:]
AGENT_SOURCE = "ref"
RCLONE_REMOTE = "BENCH"


@dataclass(frozen=True)
class Endpoint:
    """An S3 server: its URL, region, and the environment every client gets (credentials)."""

    url: str
    region: str
    environment: Mapping[str, str]


@dataclass(frozen=True)
class Job:
    """One sync: the local tree, the bucket and key prefix, and (for the agent) its own state
    directory and config file, fresh for every bucket."""

    tree: Path
    bucket: str
    prefix: str
    state_dir: Path
    config: Path


@dataclass(frozen=True)
class Invocation:
    """What to run: the argument vector, its full environment, and files to write first."""

    argv: tuple[str, ...]
    environment: Mapping[str, str]
    files: Mapping[Path, str] = field(default_factory=dict)


class ToolMissingError(Exception):
    """A tool under comparison is not installed."""


def find_program(name: str, bin_dir: Path) -> str | None:
    """Given a program name and the venv's bin directory, return the venv's copy if it has
    one (so `make bench` compares the versions it installed), else the first on PATH."""
    candidate = bin_dir / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def program_of(tool: str) -> str:
    """Given a tool name, return the executable it runs."""
    return {"agent": "agentctl", "aws": "aws", "s5cmd": "s5cmd", "rclone": "rclone"}[tool]


def version_argv(tool: str, program: str) -> tuple[str, ...]:
    """Given a tool and its executable, return the command that prints its version."""
    if tool == "s5cmd":
        return (program, "version")
    return (program, "--version")


def _toml_string(value: str) -> str:
    # A JSON string of plain text is a valid TOML basic string.
    return json.dumps(value)


def config_text(job: Job, endpoint: Endpoint, source: str, source_lines: str) -> str:
    """The agent's config for a job: its state, bucket and server, and one source over the
    job's tree with `source_lines` added to it."""
    return (
        "[agent]\n"
        f"state_dir = {_toml_string(str(job.state_dir))}\n"
        'log_target = "json"\n'
        "[destination]\n"
        f"bucket = {_toml_string(job.bucket)}\n"
        f"prefix = {_toml_string(job.prefix)}\n"
        f"endpoint_url = {_toml_string(endpoint.url)}\n"
        f"region = {_toml_string(endpoint.region)}\n"
        "[[source]]\n"
        f"name = {_toml_string(source)}\n"
        f"path = {_toml_string(str(job.tree))}\n" + source_lines
    )


def agent_config(job: Job, endpoint: Endpoint, source: str = AGENT_SOURCE) -> str:
    """Given a job and the server, return the agent's config: one source over the tree with
    sessions two levels down, defaults everywhere else. The tree's files are stamped an hour
    old, so the quiet period is already over; nothing waits on time."""
    return config_text(job, endpoint, source, 'session_depth = 2\nquiet_period = "1m"\n')


def _destination(job: Job) -> str:
    return f"{job.prefix}/{AGENT_SOURCE}" if job.prefix else AGENT_SOURCE


def invocation(
    tool: str, job: Job, endpoint: Endpoint, bin_dir: Path, base: Mapping[str, str]
) -> Invocation:
    """Given a tool, a job, the server, the venv's bin directory and the base environment,
    return how to run that tool's sync of the job. Raise ToolMissingError if it is not
    installed."""
    found = find_program(program_of(tool), bin_dir)
    if found is None:
        raise ToolMissingError(f"{program_of(tool)} not found in {bin_dir} or on PATH")
    environment = {
        **base,
        **endpoint.environment,
        "AWS_DEFAULT_REGION": endpoint.region,
        "AWS_REGION": endpoint.region,
    }
    destination = _destination(job)
    argv: tuple[str, ...]
    if tool == "agent":
        return Invocation(
            (found, "sync", "--config", str(job.config)),
            environment,
            {job.config: agent_config(job, endpoint)},
        )
    if tool == "aws":
        argv = (found, "s3", "sync", "--only-show-errors", "--no-progress")
        argv += ("--endpoint-url", endpoint.url, str(job.tree), f"s3://{job.bucket}/{destination}")
        return Invocation(argv, environment)
    if tool == "s5cmd":
        argv = (found, "--endpoint-url", endpoint.url, "sync")
        argv += (f"{job.tree}/", f"s3://{job.bucket}/{destination}/")
        return Invocation(argv, environment)
    if tool == "rclone":
        remote = f"RCLONE_CONFIG_{RCLONE_REMOTE}_"
        environment.update(
            {
                f"{remote}TYPE": "s3",
                f"{remote}PROVIDER": "Other",
                f"{remote}ENV_AUTH": "true",
                f"{remote}ENDPOINT": endpoint.url,
                f"{remote}REGION": endpoint.region,
            }
        )
        # No config file: the remote lives in the environment only.
        environment["RCLONE_CONFIG"] = os.devnull
        argv = (found, "sync", str(job.tree), f"{RCLONE_REMOTE.lower()}:{job.bucket}/{destination}")
        # rclone's AWS SDK cannot load AWS_CA_BUNDLE into rclone's own HTTP transport (it
        # fails with LoadCustomCABundleError); rclone takes the bundle as --ca-cert instead.
        bundle = environment.pop("AWS_CA_BUNDLE", None)
        if bundle and endpoint.url.startswith("https:"):
            argv += ("--ca-cert", bundle)
        return Invocation(argv, environment)
    raise ValueError(f"unknown tool {tool!r}")


def daemon_config(
    job: Job, endpoint: Endpoint, layout: str = "{subject}/{session}", source: str = "scope"
) -> str:
    """Given a job over a tree of many files and the server, return the config of a daemon
    that watches the tree and uploads nothing (quiet period and minimum age of an hour), so
    that only watching costs CPU. Rescans and heartbeats keep their defaults."""
    return config_text(
        job,
        endpoint,
        source,
        f'layout = {_toml_string(layout)}\nquiet_period = "1h"\nmin_age = "1h"\n',
    )


def serve_moto(host: str) -> None:
    """Serve moto's S3 on `host` and a free port until SIGTERM; print the port first. Request
    logging is off: a line per request would cost the server CPU the clients then lack."""
    # Only the server process needs moto, which takes a second to import.
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.s3server import list_moto_modules_once  # noqa: PLC0415

    list_moto_modules_once()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    application = DomainDispatcherApplication(create_backend_app)
    server = make_server(host, 0, application, threaded=True, request_handler=MotoRequestHandler)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on that thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(server.server_port, flush=True)
    server.serve_forever()


def main() -> int:
    """The server entry point (`serve-moto [--host H]`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve-moto", help="serve moto's S3 on loopback")
    serve.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    if arguments.command == "serve-moto":
        serve_moto(arguments.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
