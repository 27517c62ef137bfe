"""ingest-agent: uploads finished acquisition sessions from lab instruments to S3."""

from __future__ import annotations

__version__ = "0.1.0"
