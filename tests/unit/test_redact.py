import pytest
from hypothesis import given, strategies as st

from bridge.redact import redact_text, redact_url


@pytest.mark.parametrize("url, shown", [
    ("https://alice:s3cret@host/x.jpg?X-Amz-Signature=abc", "https://host/x.jpg?…"),
    ("http://token@host:8080/a/b.png", "http://host:8080/a/b.png"),
    ("https://host/x.png#frag", "https://host/x.png?…"),
    ("http://[::1]:80/a", "http://[::1]:80/a"),
    ("http://HOST/a", "http://host/a"),
    ("http://alice:pw@[bad/x?sig=1", "http://…@[bad/x?…"),  # not parsable: cut around the secrets
    ("not a url", "not a url"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_redacts_every_url_in_it():
    text = "redirected from http://u:p@a/x?k=1 to https://b/y#z"
    assert redact_text(text) == "redirected from http://a/x?… to https://b/y?…"


def test_redact_text_cuts_the_query_of_a_request_line():
    text = 'http://127.0.0.1:41561 "GET /status/404?X-Amz-Signature=abc HTTP/1.1" 404 0'
    assert redact_text(text) == 'http://127.0.0.1:41561 "GET /status/404?… HTTP/1.1" 404 0'
    assert redact_text("a/b?c stays, (/x?y) goes") == "a/b?c stays, (/x?…) goes"


@given(st.text(), st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=6, max_size=12))
def test_a_password_in_user_info_never_survives(prefix, password):
    assert password not in redact_text(f"{prefix} https://user:{password}@h/p?q={password}").replace(prefix, "")
