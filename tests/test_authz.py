"""The capture rules, case by case."""

from __future__ import annotations

import pytest

from pcapd.authz import bosh_may_capture, cf_may_capture

UUID = "f0ceb485-e188-4b9f-b3d5-fb2067aad3c2"


@pytest.mark.parametrize(("permissions", "ssh", "allowed"), [
    ({"read_basic_data": True, "read_sensitive_data": True}, None, True),   # developer, admin
    ({"read_basic_data": True, "read_sensitive_data": False}, None, False),  # auditor, manager
    ({"read_basic_data": True}, None, False),                                # field missing
    ({"read_sensitive_data": "true"}, None, False),                          # not a real true
    ({"read_sensitive_data": True}, {"enabled": True, "reason": ""}, True),
    ({"read_sensitive_data": True}, {"enabled": False, "reason": "ssh is disabled for app"},
     False),
])
def test_cf(permissions: dict[str, object], ssh: dict[str, object] | None,
            allowed: bool) -> None:
    decision = cf_may_capture("my-app", permissions, ssh)
    assert decision.allowed is allowed
    if not allowed:
        assert "my-app" in decision.reason


def test_cf_denial_names_the_ssh_reason() -> None:
    decision = cf_may_capture("a", {"read_sensitive_data": True},
                              {"enabled": False, "reason": "ssh is disabled for space 'dev'"})
    assert "ssh is disabled for space 'dev'" in decision.reason


@pytest.mark.parametrize(("scopes", "teams", "allowed"), [
    (["openid", "bosh.admin"], [], True),
    ([f"bosh.{UUID}.admin"], [], True),
    (["bosh.teams.team-a.admin"], ["team-a"], True),
    (["bosh.teams.team-a.admin"], ["team-b"], False),
    (["bosh.read", f"bosh.{UUID}.read", "bosh.teams.team-a.read"], ["team-a"], False),
    (["bosh.other-uuid.admin"], [], False),
    (["bosh.admin.evil"], [], False),
    ([], ["team-a"], False),
])
def test_bosh(scopes: list[str], teams: list[str], allowed: bool) -> None:
    decision = bosh_may_capture("cf", scopes, UUID, teams)
    assert decision.allowed is allowed
    if not allowed:
        assert "bosh.admin" in decision.reason and "cf" in decision.reason
