"""Credentials in URLs are masked wherever a URL is shown."""
from __future__ import annotations

import pytest

from edge_agent.redact import has_credentials, redact


@pytest.mark.parametrize("text, shown", [
    ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://admin:****@10.0.0.5:554/stream1"),
    ("mqtt://u:p:with:colons@broker:1883", "mqtt://u:****@broker:1883"),
    ("https://ghp_TOKEN@example.com/x", "https://****@example.com/x"),
    ("cameras: a=rtsp://x:y@h/1, b=rtsp://x:z@h/2", "cameras: a=rtsp://x:****@h/1, b=rtsp://x:****@h/2"),
    ("'mqtts://user:pw@broker'", "'mqtts://user:****@broker'"),
    ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
    ("shelf@store (no URL)", "shelf@store (no URL)"),
    ("/data/shelf@2x/*.jpg", "/data/shelf@2x/*.jpg"),
])
def test_redact(text, shown):
    assert redact(text) == shown
    assert "hunter2" not in redact(text) and "TOKEN" not in redact(text)


def test_has_credentials_and_non_strings():
    assert has_credentials("mqtt://u:p@h") and not has_credentials("mqtt://h:1883")
    assert redact(5) == 5 and redact(None) is None
