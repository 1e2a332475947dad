"""Reading Prometheus counters in-process."""

from __future__ import annotations


def counter_total(counter, outcome: str | None = None) -> float:
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and (
                outcome is None or sample.labels.get("outcome") == outcome
            ):
                total += sample.value
    return total
