"""The sidecar's end of the in-app hook: `listener` receives datagrams, `aggregate` turns decoded reports
(`dbwatch.hook.wire`) into the store's app metrics."""

from __future__ import annotations

from dbwatch.ingest.aggregate import RESULTS, Ingest, Rejected
from dbwatch.ingest.listener import running_ingest

__all__ = ["RESULTS", "Ingest", "Rejected", "running_ingest"]
