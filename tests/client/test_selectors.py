"""What Wireshark's reload buttons list, asked of a real (fake) Cloud Controller over HTTP with
the cf CLI's login: the targeted space's apps by name, an app's instances with their state
("all instances" first), each namespace's devices (``eth0`` and ``lo`` first); and one line
saying what to do when there is no space, no app, or Cloud Controller fails."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pcapd.client.selectors import cf_apps, cf_instances, devices
from pcapd.errors import PcapdError, UsageError
from tests.client.cli_logins import cf_document, write_cf_config
from tests.fakes.cloud_controller import FakeCloudController, Instance, Space
from tests.fakes.http import json_response, text_response
from tests.fakes.uaa import ALICE, FakeUAA
from tests.netns import ip, netns


@dataclass
class Cf:
    uaa: FakeUAA
    cc: FakeCloudController
    space: Space
    other: Space


@pytest.fixture(scope="module")
def cf() -> Iterator[Cf]:
    with FakeUAA() as uaa, FakeCloudController(uaa) as cc:
        org = cc.add_org("pcapd-org")
        space, other = cc.add_space(org, "dev"), cc.add_space(org, "prod")
        for each in (space, other):
            cc.grant(ALICE, "developer", each)
        cc.add_app(space, "web-b", instances=[Instance(1, "CRASHED"), Instance(0),
                                              Instance(2, "DOWN")])
        cc.add_process(cc.add_app(space, "web-a"), "worker", 2)
        cc.add_app(other, "elsewhere")
        yield Cf(uaa, cc, space, other)


@pytest.fixture
def logged_in(cf: Cf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cf CLI logged in as alice, its target the space ``dev``."""
    access, refresh = cf.uaa.issue_pair(ALICE)
    write_cf_config(tmp_path, cf_document(
        cf.uaa.url, access, refresh, Target=cf.cc.url,
        SpaceFields={"GUID": cf.space.guid, "Name": "dev", "AllowSSH": True}))
    monkeypatch.setenv("CF_HOME", str(tmp_path))
    return tmp_path


def test_the_apps_of_the_targeted_space_by_name(logged_in: Path) -> None:
    assert cf_apps() == [("web-a", "web-a"), ("web-b", "web-b")]


def test_without_a_targeted_space_the_user_is_told_to_target_one(
        cf: Cf, logged_in: Path) -> None:
    access, refresh = cf.uaa.issue_pair(ALICE)
    write_cf_config(logged_in, cf_document(cf.uaa.url, access, refresh, Target=cf.cc.url,
                                           SpaceFields={"GUID": "", "Name": ""}))
    with pytest.raises(UsageError) as refused:
        cf_apps()
    assert str(refused.value) == "no space targeted: run 'cf target -s SPACE'"


def test_instances_in_index_order_with_their_state_after_all_instances(
        logged_in: Path) -> None:
    assert cf_instances("web-b", "") == [("", "all instances"), ("0", "0 (RUNNING)"),
                                         ("1", "1 (CRASHED)"), ("2", "2 (DOWN)")]
    assert cf_instances("web-a", "worker") == [("", "all instances"), ("0", "0 (RUNNING)"),
                                               ("1", "1 (RUNNING)")]


@pytest.mark.parametrize(("app", "refusal"), [
    ("", "choose the app first"),
    ("elsewhere", "app elsewhere not found in the targeted space"),  # another space's
    ("nope", "app nope not found in the targeted space"),
])
def test_an_app_not_there_is_named(logged_in: Path, app: str, refusal: str) -> None:
    with pytest.raises(UsageError) as refused:
        cf_instances(app, "web")
    assert str(refused.value) == refusal


def test_cloud_controller_failing_is_one_line_naming_what_it_was_asked(
        cf: Cf, logged_in: Path) -> None:
    cf.cc.inject("/v3/apps", text_response(502, "bad gateway"))
    with pytest.raises(PcapdError) as failed:
        cf_apps()
    assert str(failed.value) == "Cloud Controller answered /v3/apps with HTTP 502"
    cf.cc.inject("/v3/apps", text_response(200, "<html>a captive portal</html>"))
    with pytest.raises(PcapdError) as failed:
        cf_apps()
    assert str(failed.value) == "Cloud Controller answered /v3/apps with no JSON"


def test_an_answer_of_more_than_one_page_is_followed(cf: Cf, logged_in: Path) -> None:
    """Cloud Controller's ``next`` link is followed (with its own query, not ours again)."""
    cf.cc.inject("/v3/apps", json_response(200, {
        "resources": [{"name": "first-page"}],
        "pagination": {"next": {"href": f"{cf.cc.url}/v3/apps?space_guids={cf.space.guid}"
                                        "&page=2&per_page=1"}}}))
    # page 2 of one app a page, in the order the apps were made: web-b, then web-a
    assert cf_apps() == [("first-page", "first-page"), ("web-a", "web-a")]


def test_cloud_controller_out_of_reach_is_named(cf: Cf, logged_in: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    access, refresh = cf.uaa.issue_pair(ALICE)
    write_cf_config(logged_in, cf_document(
        cf.uaa.url, access, refresh, Target=closed,
        SpaceFields={"GUID": cf.space.guid, "Name": "dev", "AllowSSH": True}))
    with pytest.raises(PcapdError) as failed:
        cf_apps()
    assert str(failed.value) == f"cannot reach Cloud Controller {closed}: ConnectionError"
    assert access not in str(failed.value)


@pytest.mark.root
def test_every_namespaces_devices_once_eth0_and_lo_first() -> None:
    with netns() as first, netns() as second:
        ip("-n", first.name, "link", "add", "zz0", "type", "veth", "peer", "name", "eth0")
        ip("-n", second.name, "link", "add", "aa0", "type", "veth", "peer", "name", "zz1")
        listed = devices("local", argparse.Namespace(netns=[first.name, second.name]))
    assert listed == [(name, name) for name in ("eth0", "lo", "aa0", "zz0", "zz1")]
