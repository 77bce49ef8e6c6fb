"""Beam metrics under one namespace, and the names the summary reads back."""

from __future__ import annotations

import apache_beam as beam

NAMESPACE = "audiotok"


def counter(name: str) -> beam.metrics.metricbase.Counter:
    return beam.metrics.Metrics.counter(NAMESPACE, name)


def distribution(name: str) -> beam.metrics.metricbase.Distribution:
    return beam.metrics.Metrics.distribution(NAMESPACE, name)


def failure(reason: str, stage: str) -> None:
    """Counts one dead-lettered input, in total and by reason."""
    counter("failures").inc()
    counter(f"failures_{stage}_{reason}").inc()
