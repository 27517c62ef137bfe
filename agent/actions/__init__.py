"""Use cases: each operator command's work as functions the CLI and the daemon call.

The CLI (agent/cli.py) keeps argparse, output and exit codes; what a command does lives here:
`sync` (one pass, and its dry run), `control` (pause, resume, retry, rescan), `verify`.
`status` is agent/report.py. Each takes settings and an opened state, never parses arguments
and never prints.
"""

from __future__ import annotations
