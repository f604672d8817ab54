"""What operators see: metrics, readiness and resources, errors, logs.

    metrics.py  the node's Prometheus registry; gauges read small views at scrape time
    monitor.py  readiness checks and the resource monitor (loop lag, RSS, open files)
    errors.py   the error ring, error counters and optional Sentry reports; supervised services
    logs.py     JSON/text log lines with client and request ids, token redaction

Importing the package loads nothing; import the module you need.
"""

__all__: list[str] = []
