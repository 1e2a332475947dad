"""scripts/bench-stream: a tiny run opens its streams and receives an event per write
(not checked: the timings, this machine is noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT


def test_tiny_run_holds_its_streams_and_receives_the_events(server_urls, tmp_path):
    db_url, redis_url = server_urls
    out = tmp_path / "stream.json"
    env = {**os.environ, "BENCH_DATABASE_URL": db_url, "BENCH_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench-stream"), "--streams", "20",
         "--rate", "20", "--seconds", "1", "--open-rate", "100", "--group-members", "5",
         "--group-items", "2", "--settle", "0", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "streams held: 20 by the stream process" in done.stdout
    result = json.loads(out.read_text())
    assert result["streams_opened"] == result["streams_held_server"] == 20
    assert result["streams_held_end"] == 20 and not result["open_failures"]
    assert result["write_errors"] == 0 and result["committed"] == 20
    assert result["events_matched"] == 20  # every write's event reached its stream
    assert result["delay_p50_ms"] is not None and result["kib_per_stream"] is not None
    assert result["events"]["unread"] == 2 * 5  # each group item, to each listening member
