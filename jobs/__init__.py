"""RQ tasks and scheduled work: warming, fan-out, persistence, retention, reconciliation."""
