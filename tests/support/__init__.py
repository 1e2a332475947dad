"""Helpers shared by the test tiers: servers, tokens, data builders and oracles."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project
