"""Run one write through the app and die (``os._exit``) right after its Postgres commit,
before the cache is touched: the crash the outbox relay exists for.

    python -m tests.reliability.crash_write '<json: kind, ctx, user, i>'

Settings come from the environment. Once the app is built it prints ``ready`` and waits
for a line on stdin, so a test can start several and let them write at the same moment
(a process that crashed seconds before the others could already be repaired by the relay
when the last one dies). Exit code ``CRASHED`` if the hook fired; otherwise the write
never reached a commit with cache changes, and the HTTP status is printed.
"""

from __future__ import annotations

import json
import os
import sys

CRASHED = 17


def main(argv: list[str]) -> int:
    from service import create_app
    from tests.reliability.workload import ALL_KINDS

    job = json.loads(argv[1])
    kind = next(k for k in ALL_KINDS if k.name == job["kind"])
    app = create_app({"TESTING": True})
    # The applier runs first after a commit: die there, before Redis is touched.
    app.extensions["hc"].applier.apply = lambda *args, **kwargs: os._exit(CRASHED)
    client = app.test_client()
    print("ready", flush=True)
    sys.stdin.readline()
    status, _ = kind.write(client, job["ctx"], job["user"], job["i"])
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
