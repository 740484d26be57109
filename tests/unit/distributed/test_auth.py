"""Bind rules and token files: secure by default."""

import pytest

from lazarus.distributed import auth


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses_need_no_token(host):
    auth.check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_binding_beyond_loopback_without_a_token_is_refused(host):
    with pytest.raises(auth.InsecureBindError, match=f"refusing to bind {host} without an auth token"):
        auth.check_bind(host, None)
    auth.check_bind(host, "a-token")  # with a token it is allowed


def test_token_file_is_stripped_and_an_empty_one_is_refused(tmp_path):
    (tmp_path / "token").write_text("  s3cret\n")
    assert auth.read_token(tmp_path / "token") == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(auth.TokenFileError, match="empty"):
        auth.read_token(tmp_path / "empty")
    with pytest.raises(auth.TokenFileError, match="missing"):
        auth.read_token(tmp_path / "missing")
