"""HTTP URLs as the settings check and the scraper read them (one reading for both)."""

from __future__ import annotations

import pytest

from agent.urls import parse_http_url


def test_a_url_is_read_into_origin_target_and_credentials() -> None:
    url = parse_http_url("HTTPS://us%40er:p%3Ass@[fd00::7]/v1/metrics?model=a%20b")
    assert url.origin == ("https", "fd00::7", 443)
    assert url.target == "/v1/metrics?model=a%20b"
    assert (url.username, url.password) == ("us@er", "p:ss")
    assert url.shown() == "https://[fd00::7]:443/v1/metrics?model=a%20b"
    assert url.origin_text() == "https://[fd00::7]:443"


def test_defaults_port_80_and_path_slash() -> None:
    url = parse_http_url("http://vllm")
    assert (url.port, url.target, url.username, url.password) == (80, "/", None, None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://u:secret-77@[::1/m", "not a valid URL"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("http://:8000/m", "has no host"),
        ("http://h:65536/m", "port 65536 is not in 1..65535"),
        ("http://h:0/m", "port 0 is not in 1..65535"),
        ("http://u:secret-77@h:x/m", "port 'x' is not a number"),
        ("http://h/a\tb", "spaces or control characters in the URL"),
        ("http://h/m\n", "spaces or control characters in the URL"),
        ("http://u:secret 77@h/m", "spaces or control characters in the URL"),
    ],
)
def test_what_cannot_be_used_is_named_without_repeating_the_url(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_http_url(text)
    assert "secret-77" not in str(info.value)
