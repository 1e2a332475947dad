"""Alembic history: one head, so `upgrade head` (the Procfile's release) is unambiguous."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from storage.migrate import alembic_config


def test_one_alembic_head():
    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://unused/x"))
    assert len(script.get_heads()) == 1, script.get_heads()
