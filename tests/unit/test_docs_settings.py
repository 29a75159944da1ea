"""Every setting says what it is for: the README's configuration table and `config show` are
generated from the descriptions, so a setting without one is a blank row to the operator."""

from __future__ import annotations

from attest_gateway.config import Settings


def test_every_setting_has_a_description() -> None:
    undescribed = [
        name
        for name, field in Settings.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undescribed == []
