"""Settings parsing (service/settings.py): values from the environment, bad ones refused
with the variable's name."""

from __future__ import annotations

import pytest

from service.settings import Settings

APP_ORIGIN = "https://app.example.com"


@pytest.mark.parametrize("bad", [
    "*", "https://*.example.com", "app.example.com", "https://app.example.com/path",
    "ftp://app.example.com", "https://user@app.example.com", "https://app.example.com?x=1",
    "https://app.example.com:99999", "https://", "null",
])
def test_bad_origin_setting_is_refused(bad):
    with pytest.raises(ValueError, match="CORS_ALLOWED_ORIGINS"):
        Settings.from_env({"CORS_ALLOWED_ORIGINS": f"{APP_ORIGIN},{bad}"})


def test_origins_are_normalised():
    parsed = Settings.from_env(
        {"CORS_ALLOWED_ORIGINS": "HTTPS://App.Example.com/, https://app.example.com"}
    ).cors_allowed_origins
    assert parsed == (APP_ORIGIN,)


def test_log_sample_setting():
    assert Settings.from_env({}).ranking_log_sample == 0.01
    assert Settings.from_env({"RANKING_LOG_SAMPLE": "0.5"}).ranking_log_sample == 0.5
    for bad in ("1.5", "-0.1", "nan", "often"):
        with pytest.raises(ValueError, match="RANKING_LOG_SAMPLE"):
            Settings.from_env({"RANKING_LOG_SAMPLE": bad})


def test_log_level_in_any_case():
    """``LOG_LEVEL=info`` (as web.py and granian spell it) is the app's INFO too: the app
    used to stop at start with logging's "Unknown level: 'info'"."""
    assert Settings.from_env({}).log_level == "INFO"
    assert Settings.from_env({"LOG_LEVEL": "warning"}).log_level == "WARNING"
    assert Settings.from_env({"LOG_LEVEL": " Debug "}).log_level == "DEBUG"
    for bad in ("loud", "", "10"):
        with pytest.raises(ValueError, match="LOG_LEVEL"):
            Settings.from_env({"LOG_LEVEL": bad})
