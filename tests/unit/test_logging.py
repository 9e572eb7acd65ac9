from dcpulse.log import MASK, redact_secrets


def test_secret_keys_are_masked() -> None:
    out = redact_secrets(None, "info", {"event": "x", "admin_token": "abc", "password": "p", "port": 8086})
    assert out["admin_token"] == MASK
    assert out["password"] == MASK
    assert out["port"] == 8086


def test_tokens_inside_text_are_masked() -> None:
    header = "Authorization: Token Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=="
    out = redact_secrets(None, "info", {"event": f"request failed {header}"})
    assert "Zm9vYmFy" not in out["event"]
    assert MASK in out["event"]
