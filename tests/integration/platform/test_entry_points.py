"""Without DATABASE_URL / REDIS_URL the service's entry points refuse to start, at once, with
one line naming the variable, and create nothing on disk; ``flask token`` needs neither."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from service import create_app
from service.settings import NotConfigured, Settings
from tests.support import ROOT as PROJECT_ROOT
from tests.support.auth import JWT_SECRET

ROOT = PROJECT_ROOT
BIN = Path(sys.executable).parent
SERVER_VARS = ("DATABASE_URL", "REDIS_URL", "RQ_REDIS_URL", "DATA_DIR")


def bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["JWT_SECRET"] = JWT_SECRET
    return {**env, **extra}


def run(cmd: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=bare_env(**extra), capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(
    ("given", "named"),
    [({}, "DATABASE_URL and REDIS_URL are not set"),
     ({"database_url": "postgresql+psycopg://x@127.0.0.1/x"}, "REDIS_URL is not set"),
     ({"redis_url": "redis://127.0.0.1:1/0"}, "DATABASE_URL is not set")],
)
def test_create_app_names_the_missing_variable(tmp_path, given, named):
    settings = Settings(data_dir=str(tmp_path / "data"), jwt_secret=JWT_SECRET, **given)
    with pytest.raises(NotConfigured) as raised:
        create_app({"SETTINGS": settings})
    assert named in str(raised.value.code)
    assert "make run" in str(raised.value.code)
    assert raised.value.code  # a non-zero exit status when it ends the process
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "cmd",
    [["flask", "--app", "service", "worker", "--burst"],
     ["flask", "--app", "service", "scheduler"],
     ["flask", "--app", "service", "migrate"],
     ["python", str(ROOT / "web.py")],
     ["gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "service:create_app()"]],
    ids=["worker", "scheduler", "migrate", "web", "gunicorn"],
)
def test_processes_exit_at_once_without_server_urls(tmp_path, cmd):
    done = run([str(BIN / cmd[0]), *cmd[1:]], tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "DATABASE_URL" in line]
    assert lines == [lines[0]] and "is not set" in lines[0] and "make run" in lines[0], \
        done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no ./.data, no metrics dir, nothing


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_the_app_refuses_a_missing_or_short_jwt_secret(secret):
    settings = Settings(database_url="postgresql+psycopg://x@127.0.0.1/x",
                        redis_url="redis://127.0.0.1:1/0", jwt_secret=secret)
    with pytest.raises(NotConfigured) as raised:
        create_app({"SETTINGS": settings})
    assert "JWT_SECRET must be set to at least 32 bytes" in str(raised.value.code)


# Each process once, each with another of the bad secrets above (the check is the app's).
@pytest.mark.parametrize(("cmd", "secret"), [
    (["python", str(ROOT / "web.py")], ""),
    (["gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "service:create_app()"], "short"),
    (["flask", "--app", "service", "worker", "--burst"], "x" * 31),
], ids=["web", "gunicorn", "worker"])
def test_processes_refuse_a_missing_or_short_jwt_secret(tmp_path, cmd, secret):
    env = {"DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/0",
           "JWT_SECRET": secret}
    done = run([str(BIN / cmd[0]), *cmd[1:]], tmp_path, **env)
    assert done.returncode != 0 and "JWT_SECRET must be set" in done.stderr, cmd
    assert "Traceback" not in done.stderr, done.stderr[-2000:]


def test_flask_token_uses_the_development_secret_of_make_run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "jwt-secret").write_text("d" * 64 + "\n")
    done = run([str(BIN / "flask"), "--app", "service", "token", "--user", "3"], tmp_path,
               JWT_SECRET="", DATA_DIR=str(data))
    assert done.returncode == 0, done.stderr
    assert jwt.decode(done.stdout.strip(), "d" * 64, algorithms=["HS256"])["sub"] == "3"
    assert "development secret" in done.stderr
    missing = run([str(BIN / "flask"), "--app", "service", "token", "--user", "3"], tmp_path,
                  JWT_SECRET="", DATA_DIR=str(tmp_path / "none"))
    assert missing.returncode != 0 and "JWT_SECRET is not set" in missing.stderr


def test_flask_token_needs_no_database(tmp_path):
    done = run([str(BIN / "flask"), "--app", "service", "token", "--user", "7", "--admin"],
               tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    claims = jwt.decode(done.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] in ("7", 7) and claims["role"] == "admin"
    assert list(tmp_path.iterdir()) == []
