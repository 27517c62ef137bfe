"""Prometheus metrics, from the `prometheus_client` library: counters the daemon keeps while it
uploads, and gauges read from the status report at each scrape (so they say what `status`
says). Two ways out, both off by default: an HTTP listener (`[metrics] listen`) and a
node-exporter textfile rewritten atomically every `[metrics] interval` (`[metrics] textfile`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import write_to_textfile
from prometheus_client.registry import Collector

from agent import __version__
from agent.config import Settings
from agent.errors import PermanentTransferError, RetryableTransferError, TransferError
from agent.sessions import SESSION_STATES
from agent.state import SessionRecord
from agent.upload import UploadOutcome

log = structlog.get_logger("agent.metrics")
# No `*_created` series: they double the exposition and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Session upload times run from a second to hours (a terabyte over a shared link).
SECONDS_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, float("inf"))


def error_kind(error: TransferError) -> str:
    """permanent, retryable or local (reading the file): the label of failures and retries."""
    if isinstance(error, PermanentTransferError):
        return "permanent"
    if isinstance(error, RetryableTransferError):
        return "retryable"
    return "local" if error.operation == "read" else "other"


class _ReportCollector(Collector):
    """Gauges from the status report, read when scraped."""

    def __init__(self, report: Callable[[], dict[str, Any]], sent: Callable[[], int]) -> None:
        self.report = report
        self.sent = sent

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "ingest_bytes_sent",
            "Bytes sent to S3 on the wire (parts and objects, retries included).",
            value=self.sent(),
        )
        try:
            report = self.report()
        except Exception as error:  # a scrape must answer even when the database cannot
            log.warning("metrics_report_failed", error=str(error))
            yield GaugeMetricFamily("ingest_up", "1 when the state database could be read.", 0)
            return
        yield GaugeMetricFamily("ingest_up", "1 when the state database could be read.", 1)
        code = GaugeMetricFamily(
            "ingest_status", "status verdict: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
        )
        code.add_metric([], report.get("code", 3))
        yield code
        sessions = GaugeMetricFamily("ingest_sessions", "Sessions by state.", labels=["state"])
        for state in SESSION_STATES:
            sessions.add_metric([state], report["sessions"].get(state, 0))
        yield sessions
        backlog = report["backlog"]
        yield GaugeMetricFamily(
            "ingest_backlog_files", "Files not yet in S3.", value=backlog["files"]
        )
        yield GaugeMetricFamily(
            "ingest_backlog_bytes", "Bytes not yet in S3.", value=backlog["bytes"]
        )
        yield GaugeMetricFamily(
            "ingest_ready_backlog_bytes",
            "Bytes of sessions that are complete and due to be sent now.",
            value=backlog["ready_bytes"],
        )
        uploads, daemon = report["uploads"], report["daemon"]
        yield GaugeMetricFamily(
            "ingest_paused", "1 when uploads are paused.", value=int(uploads["paused"])
        )
        yield GaugeMetricFamily(
            "ingest_bandwidth_limit_bytes",
            "Bandwidth limit in bytes/s now (0: unlimited).",
            value=uploads["max_bandwidth"],
        )
        yield GaugeMetricFamily(
            "ingest_upload_rate_bytes",
            "Bytes/s sent over the daemon's last seconds.",
            value=uploads["rate_bytes_per_s"],
        )
        now = time.time()
        if daemon["heartbeat_age_s"] is not None:
            yield GaugeMetricFamily(
                "ingest_heartbeat_timestamp_seconds",
                "When the daemon last recorded its heartbeat.",
                value=round(now - daemon["heartbeat_age_s"], 1),
            )
        if uploads["last_upload_age_s"] is not None:
            yield GaugeMetricFamily(
                "ingest_last_upload_timestamp_seconds",
                "When a file last finished uploading.",
                value=round(now - uploads["last_upload_age_s"], 1),
            )
        oldest = report["oldest"]["ready"]
        yield GaugeMetricFamily(
            "ingest_oldest_ready_age_seconds",
            "How long the oldest session ready to upload has waited (0: none).",
            value=oldest["age_s"] if oldest else 0,
        )


class Metrics:
    """The daemon's metrics: counters fed by upload outcomes and retries, gauges from the
    status report, exposed over HTTP and/or a textfile as configured."""

    def __init__(
        self,
        settings: Settings,
        report: Callable[[], dict[str, Any]],
        sent: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        Info("ingest_agent", "The agent's name and version.", registry=self.registry).info(
            {"agent": settings.agent.name, "version": __version__}
        )
        self.files = Counter(
            "ingest_files_uploaded", "Files whose upload S3 confirmed.", registry=self.registry
        )
        self.bytes = Counter(
            "ingest_bytes_uploaded",
            "Bytes of files whose upload S3 confirmed.",
            registry=self.registry,
        )
        self.sessions = Counter(
            "ingest_sessions_uploaded",
            "Sessions uploaded completely (manifest written).",
            registry=self.registry,
        )
        self.failures = Counter(
            "ingest_upload_failures",
            "Session uploads that failed, by kind of the first error.",
            ["kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "ingest_retries",
            "S3 calls retried, by kind of error.",
            ["kind"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "ingest_session_upload_seconds",
            "Seconds spent uploading one session (one attempt).",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        for kind in ("permanent", "retryable", "local", "other"):
            self.failures.labels(kind)
            self.retries.labels(kind)
        self.registry.register(_ReportCollector(report, sent))
        self._server: WSGIServer | None = None
        self._next_write = 0.0

    def outcome(self, record: SessionRecord, outcome: UploadOutcome, seconds: float) -> None:
        """Count one session upload's outcome."""
        del record
        self.files.inc(outcome.files_sent)
        self.bytes.inc(outcome.bytes_sent)
        self.seconds.observe(seconds)
        if outcome.complete:
            self.sessions.inc()
        elif outcome.errors:
            self.failures.labels(error_kind(outcome.errors[0])).inc()

    def retry(self, error: TransferError) -> None:
        """Count one retried S3 call."""
        self.retries.labels(error_kind(error)).inc()

    def start(self) -> None:
        """Open the HTTP listener if configured. A listener that cannot bind is logged, and
        the agent runs on without it: uploads matter more than their metrics."""
        listen = self.settings.metrics.listen
        if listen is None:
            return
        host, port = listen
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            log.error(
                "metrics_listen_failed",
                address=f"{host}:{port}",
                error=f"{error.strerror or error}; metrics are not served ([metrics] listen)",
            )
            return
        log.info("metrics_listening", address=f"{host}:{port}")

    def tick(self, now: float, *, force: bool = False) -> None:
        """Rewrite the textfile if configured and due (atomically: a temp file renamed)."""
        path = self.settings.metrics.textfile
        if path is None or (now < self._next_write and not force):
            return
        self._next_write = now + self.settings.metrics.interval
        try:
            write_to_textfile(str(path), self.registry)
        except OSError as error:
            log.warning(
                "metrics_textfile_failed",
                path=str(path),
                error=f"{error.strerror or error} ([metrics] textfile)",
            )

    def stop(self) -> None:
        """Close the listener and write the textfile one last time."""
        self.tick(time.time(), force=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
