"""Who may capture what: pure allow/deny decisions from token claims and platform answers.

No I/O: the resolvers fetch what the platform says (Cloud Controller permissions, the
director's teams) and ask here. Keeping the rules in one small module makes them easy to read
side by side and to test exhaustively.

- Cloud Foundry: capturing an app's traffic exposes what its users send it, so it takes the
  right to read the app's *sensitive data* (``read_sensitive_data``: Space Developer, admin,
  admin read-only) — the rule Cloud Controller itself uses for environment variables. With
  ``cf.require_ssh_enabled`` the app must also allow ``cf ssh``: an operator who disabled SSH
  for a space usually means "nobody looks inside".
- BOSH: only admins of the director (``bosh.admin``, ``bosh.<uuid>.admin``) or of a team the
  deployment belongs to (``bosh.teams.<team>.admin``); read-only scopes are not enough — a
  packet capture is not a read of the deployment's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOW = Decision(True)


def cf_may_capture(app: str, permissions: Mapping[str, object],
                   ssh_enabled: Mapping[str, object] | None = None) -> Decision:
    """From ``/v3/apps/:guid/permissions`` (and ``/ssh_enabled`` when required)."""
    if permissions.get("read_sensitive_data") is not True:
        return Decision(False, f"you may not capture app {app}: capturing needs the right to "
                               "read its sensitive data (Space Developer of its space, or admin)")
    if ssh_enabled is not None and ssh_enabled.get("enabled") is not True:
        reason = str(ssh_enabled.get("reason") or "ssh is disabled")
        return Decision(False, f"you may not capture app {app}: this platform requires "
                               f"`cf ssh` to be allowed for it, and {reason}")
    return ALLOW


def bosh_admin_scopes(director_uuid: str, teams: Iterable[str]) -> list[str]:
    """The scopes any one of which lets a user capture a deployment of these teams."""
    return ["bosh.admin", f"bosh.{director_uuid}.admin",
            *(f"bosh.teams.{team}.admin" for team in teams)]


def bosh_may_capture(deployment: str, scopes: Iterable[str], director_uuid: str,
                     teams: Iterable[str]) -> Decision:
    """From the token's scopes and the deployment's teams (``GET /deployments``)."""
    wanted = bosh_admin_scopes(director_uuid, teams)
    if set(wanted) & set(scopes):
        return ALLOW
    return Decision(False, f"you may not capture deployment {deployment}: it takes one of the "
                           f"scopes {', '.join(wanted)}")
