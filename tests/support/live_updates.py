"""A stream process in a thread, and a small SSE client, for the live-update tests."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
import requests
from aiohttp import web
from rq.job import Job

from jobs.context import use_state
from service.settings import Settings
from service.stream_server import HUB_KEY, make_app
from tests.support.servers import free_port


def run_jobs(state: Any) -> int:
    """Run the jobs queued on the default queue (a group item's fan-out is one) here, in
    turn, as a worker would (each found by its dotted name); returns how many ran."""
    queue = state.queue()
    ran = 0
    use_state(state)
    try:
        while job_ids := queue.get_job_ids():
            for job_id in job_ids:
                job = Job.fetch(job_id, connection=state.queue_redis)
                queue.remove(job)
                job.perform()
                job.delete()
                ran += 1
    finally:
        use_state(None)
    return ran


class StreamServer:
    """``service.stream_server``'s app on a free loopback port, on its own event loop."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/stream"

    def _run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> StreamServer:
        self.thread.start()

        async def up() -> None:
            self.runner = web.AppRunner(make_app(self.settings), handle_signals=False,
                                        shutdown_timeout=0.5)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self._run(up())
        return self

    @property
    def hub(self) -> Any:
        assert self.runner is not None
        return self.runner.app[HUB_KEY]

    def streams(self) -> int:
        return self._run(self._count())

    async def _count(self) -> int:
        return len(self.hub.connections())

    def stop(self) -> None:
        if self.runner is not None:
            self._run(self.runner.cleanup())
            self.runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class Message:
    id: str | None
    event: str | None
    data: Any
    comment: str | None = None


class SseClient:
    """Reads one event stream in a thread; ``next()`` gives its messages in order."""

    def __init__(self, url: str, params: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.response = requests.get(url, params=params, headers=headers, stream=True,
                                     timeout=10)
        self.status = self.response.status_code
        self.messages: queue.Queue[Message | None] = queue.Queue()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        comment = None
        try:
            for raw in self.response.iter_lines(chunk_size=1, decode_unicode=True):
                if raw == "":
                    fields.pop("retry", None)
                    if fields or comment:
                        data = fields.get("data")
                        self.messages.put(Message(fields.get("id"), fields.get("event"),
                                                  orjson.loads(data) if data else None,
                                                  comment))
                    fields, comment = {}, None
                elif raw.startswith(":"):
                    comment = raw[1:].strip()
                else:
                    name, _, value = raw.partition(":")
                    fields[name] = value.removeprefix(" ")
        except (requests.RequestException, AttributeError, ValueError):
            pass
        self.messages.put(None)

    def next(self, timeout: float = 10, pings: bool = False) -> Message | None:
        """The next message (events, id-only marks; pings only if ``pings``); None at the
        end of the stream. Raises ``queue.Empty`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout  # pings must not extend the wait
        while True:
            message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            if message is None or pings or message.comment != "ping":
                return message

    def event(self, timeout: float = 10) -> Message:
        """The next named event (skipping id-only marks and pings)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.0, deadline - time.monotonic()))
            assert message is not None, "stream ended"
            if message.event:
                return message

    def close(self) -> None:
        self.response.close()

    def json(self) -> Any:
        return self.response.json()
