"""One redactor for every place a storage URL is printed, logged or recorded (studies, presets, messages)."""

from __future__ import annotations

from autotune.redact import has_password, redact_url


def test_passwords_in_userinfo_and_query_are_hidden():
    assert redact_url("postgresql://alice:s3cret@db.example:5432/studies") == \
        "postgresql://alice:***@db.example:5432/studies"
    assert redact_url("postgresql+psycopg2://bob:p%40ss@h/db?sslmode=require") == \
        "postgresql+psycopg2://bob:***@h/db?sslmode=require"
    assert redact_url("postgresql://h/db?user=u&password=pw") == "postgresql://h/db?user=u&password=***"
    assert redact_url("mysql://h/db?PWD=pw&x=1") == "mysql://h/db?PWD=***&x=1"


def test_urls_without_a_password_and_paths_are_unchanged():
    assert redact_url("postgresql://carol@h/db") == "postgresql://carol@h/db"
    assert redact_url("runs/studies.journal") == "runs/studies.journal"
    assert redact_url(None) is None


def test_a_broken_url_and_a_url_inside_a_message_lose_their_password():
    assert "s3cret" not in redact_url("postgresql://alice:s3cret@[::1")
    message = "could not connect to postgresql://u:hunter2@db/x: timeout"
    assert redact_url(message) == "could not connect to postgresql://u:***@db/x: timeout"


def test_has_password_tells_clear_from_redacted():
    assert has_password("postgresql://u:pw@h/db") and has_password("postgresql://h/db?password=pw")
    assert not has_password("postgresql://u:***@h/db") and not has_password("postgresql://u@h/db")
    assert not has_password(None)
