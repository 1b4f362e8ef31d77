"""Small pieces of the control routes that need no gateway."""

from __future__ import annotations

from failsoft.server.control_routes import _redacted


def test_the_admin_token_is_never_shown_to_a_reader() -> None:
    config = {"server": {"admin_token": "very-secret-token-123", "port": 8000}, "models": {}}

    shown = _redacted(config)

    assert shown["server"] == {"admin_token": "<redacted>", "port": 8000}
    assert config["server"]["admin_token"] == "very-secret-token-123"  # the stored one is untouched
    assert _redacted({"models": {}}) == {"models": {}}
