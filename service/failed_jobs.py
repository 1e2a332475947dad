"""Failed RQ jobs: list, requeue, delete, and counts per queue and job type for /metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rq.job import Job
from rq.queue import Queue


@dataclass
class FailedJob:
    id: str
    queue: str
    func: str
    ended_at: str | None
    error: str


def list_failed(queues: list[Queue], limit: int = 100) -> list[FailedJob]:
    out: list[FailedJob] = []
    for queue in queues:
        registry = queue.failed_job_registry
        ids = registry.get_job_ids(0, limit - 1)
        for job in Job.fetch_many(ids, connection=queue.connection):
            if job is None:
                continue
            info = job.latest_result()
            error = (info.exc_string or "").strip().splitlines() if info else []
            out.append(FailedJob(
                id=job.id,
                queue=queue.name,
                func=job.func_name,
                ended_at=job.ended_at.isoformat() if job.ended_at else None,
                error=error[-1] if error else "",
            ))
    return out


def counts_by_type(queues: list[Queue], limit: int = 1000) -> Counter[tuple[str, str]]:
    """(queue, job function) -> failed count, over at most ``limit`` jobs per queue."""
    counts: Counter[tuple[str, str]] = Counter()
    for queue in queues:
        ids = queue.failed_job_registry.get_job_ids(0, limit - 1)
        for job in Job.fetch_many(ids, connection=queue.connection):
            counts[(queue.name, job.func_name if job else "unknown")] += 1
    return counts


def _each_failed(queues: list[Queue], job_id: str | None, act) -> int:
    n = 0
    for queue in queues:
        registry = queue.failed_job_registry
        for jid in [job_id] if job_id else registry.get_job_ids():
            if jid in registry:
                act(registry, jid)
                n += 1
    return n


def requeue(queues: list[Queue], job_id: str | None = None) -> int:
    """Requeue one failed job (``job_id``) or all of them; returns how many."""
    return _each_failed(queues, job_id, lambda registry, jid: registry.requeue(jid))


def delete(queues: list[Queue], job_id: str | None = None) -> int:
    """Delete one failed job or all of them; returns how many."""
    return _each_failed(
        queues, job_id, lambda registry, jid: registry.remove(jid, delete_job=True)
    )
