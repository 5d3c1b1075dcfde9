"""Exporters: turn an agent Snapshot into the outside world (Prometheus exposition, HTTP)."""
