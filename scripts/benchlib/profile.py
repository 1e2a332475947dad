"""Summary of a py-spy ``--format raw`` profile (collapsed stacks: ``f1;f2;...;fn count``).

Three views of where the web processes spend their (non-idle) samples: by layer (the
library or project package of the innermost frame), by function (self samples), and by
function including callees (inclusive samples).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
LAYERS = (
    ("service/", "project: service"), ("cache/", "project: cache"),
    ("storage/", "project: storage"), ("jobs/", "project: jobs"),
    ("sqlalchemy/", "sqlalchemy"), ("psycopg", "psycopg"), ("redis/", "redis-py"),
    ("flask_smorest/", "flask-smorest"), ("marshmallow/", "marshmallow"),
    ("werkzeug/", "werkzeug"), ("flask/", "flask"), ("gunicorn/", "gunicorn"),
    ("prometheus_client/", "prometheus_client"), ("jwt/", "pyjwt"),
    ("logging/", "logging"), ("json/", "json"), ("rq/", "rq"),
)


def layer(path: str) -> str:
    for marker, name in LAYERS:
        if marker in path:
            return name
    return "python stdlib / other"


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        if frame.startswith(("process ", "thread ")):
            continue
        m = FRAME.match(frame)
        out.append((m.group("func"), m.group("file")) if m else (frame, ""))
    return out


def summarise(raw: Path, top: int = 15) -> dict:
    """Samples per layer, top functions by self and by inclusive samples (as fractions)."""
    layers: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        if not frames:
            continue
        total += n
        func, path = frames[-1]
        # The innermost frame of project code or a library the service calls names the
        # layer; a frame deep inside the stdlib (socket, selectors...) counts for its
        # nearest caller that is not stdlib.
        named = next((layer(p) for _, p in reversed(frames)
                      if layer(p) != "python stdlib / other"), layer(path))
        layers[named] += n
        own[f"{func} ({_short(path)})"] += n
        for name in {f"{f} ({_short(p)})" for f, p in frames}:
            inclusive[name] += n

    def frac(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 3)) for k, v in counter.most_common(top)] if total else []

    return {"samples": total, "by_layer": frac(layers), "self": frac(own),
            "inclusive": frac(inclusive)}


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def markdown(profile: dict) -> str:
    if profile.get("status") != "ok":
        return f"profile of {profile.get('endpoint')}: {profile.get('status')}"
    rows = [f"Profile of `{profile['endpoint']}` under load (py-spy, {profile['samples']} "
            "samples of the web processes holding the GIL, i.e. running Python):", "",
            "| layer (innermost non-stdlib frame) | share |", "|---|--:|"]
    rows += [f"| {k} | {v:.1%} |" for k, v in profile["by_layer"]]
    rows += ["", "| function, self | share |", "|---|--:|"]
    rows += [f"| `{k}` | {v:.1%} |" for k, v in profile["self"]]
    rows += ["", "| function, inclusive | share |", "|---|--:|"]
    rows += [f"| `{k}` | {v:.1%} |" for k, v in profile["inclusive"]]
    return "\n".join(rows)
