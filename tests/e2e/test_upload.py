"""The four "upload to storage for later download" use cases of SPEC §1, end to end, against
the local-disk store and a real S3-compatible server on loopback (moto in server mode).

The user runs ``pcapd capture cf|bosh … --upload``, makes traffic, stops; the api streams the
merged pcapng into the store; the user gets an id and a URL, then ``pcapd captures download``
fetches the file, which tshark reads. Other users see nothing of it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.platform_landscape import Landscape, developer_tokens
from tests.e2e.procs import PCAPD
from tests.fakes import ALICE, BOB, CAROL
from tests.netns import send_udp
from tests.readers import run_tool, tshark_fields
from tests.s3_server import new_bucket, running_moto

pytestmark = [pytest.mark.root, pytest.mark.tools]

STORED = re.compile(r"stored capture ([0-9a-f]{32}): .*\ndownload \(until [^)]*\): (\S+)")


@pytest.fixture(scope="module", params=["local", "s3"])
def landscape(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    tmp = tmp_path_factory.mktemp(f"upload-{request.param}")
    if request.param == "s3":
        with running_moto() as s3, Landscape(tmp, storage=s3.storage(new_bucket())) as built:
            built.s3 = s3  # type: ignore[attr-defined]
            built.deploy_app("my-app", instances=2)
            built.deploy_vms("cf", "router", teams=["team-a"])
            yield built
        return
    with Landscape(tmp) as built:
        built.deploy_app("my-app", instances=2)
        built.deploy_vms("cf", "router", teams=["team-a"])
        yield built


async def start_upload(args: list[str], env: dict[str, str], *, pcapd: str = PCAPD
                       ) -> tuple[trio.Process, bytes]:
    """``pcapd capture ARGS --upload``, once it reports that it is capturing; and its stderr
    (``pcapd``: another install's executable, e.g. a client-only venv's)."""
    process = await trio.lowlevel.open_process(
        [pcapd, "capture", *args, "-f", "udp and not icmp", "--upload"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    err = b""
    while b"capturing" not in err:
        chunk = await process.stderr.receive_some(4096)
        assert chunk, err.decode()
        err += chunk
    return process, err


async def upload(args: list[str], env: dict[str, str],
                 traffic: list[tuple[object, str, bytes]], *, pcapd: str = PCAPD
                 ) -> tuple[str, str, str]:
    """``pcapd capture ARGS --upload``; traffic once it runs; stop; (capture id, url, stderr)."""
    with trio.fail_after(90):
        process, err = await start_upload(args, env, pcapd=pcapd)
        for ns, destination, marker in traffic:
            await send_udp(ns, destination, 9999, 20, marker=marker)  # type: ignore[arg-type]
        process.send_signal(2)
        assert process.stderr is not None and process.stdout is not None
        async for chunk in process.stderr:
            err += chunk
        assert await process.wait() == 0, err.decode()
        assert await process.stdout.receive_some(1) == b""  # nothing but progress: no pcapng
    text = err.decode()
    found = STORED.search(text)
    assert found, text
    return found[1], found[2], text


async def download(capture_id: str, env: dict[str, str], path: Path, *, pcapd: str = PCAPD
                   ) -> subprocess.CompletedProcess[bytes]:
    """``pcapd captures download``, logged in as ``env`` says (cf, or bosh when it names a
    bosh environment)."""
    login = ["--bosh"] if "BOSH_CONFIG" in env else []
    return await trio.run_process(
        [pcapd, "captures", "download", capture_id, "-w", str(path), *login],
        env=env, capture_stdout=True, capture_stderr=True, check=False)


def per_interface(path: Path, markers: dict[bytes, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, data in tshark_fields(path, "frame.interface_name", "data.data"):
        payload = bytes.fromhex(data) if data else b""
        for marker, expected in markers.items():
            if payload.startswith(marker):
                assert name == expected
                counts[name] = counts.get(name, 0) + 1
    return counts


async def check_roundtrip(landscape: Landscape, tmp_path: Path, args: list[str],
                          env: dict[str, str],
                          traffic: list[tuple[object, str, bytes, str]]) -> str:
    capture_id, url, text = await upload(args, env, [t[:3] for t in traffic])
    out = tmp_path / "downloaded.pcapng"
    result = await download(capture_id, env, out)
    assert result.returncode == 0, result.stderr.decode()
    assert per_interface(out, {m: name for *_, m, name in traffic}) == {
        name: 20 for *_, name in traffic}
    assert "Number of stat entries = 1" in run_tool("capinfos", out)
    landscape.client_lines.extend(text.splitlines())
    assert url.startswith(("http://", "https://"))
    return capture_id


def stored_record(landscape: Landscape, capture_id: str) -> dict[str, object]:
    """The metadata the store keeps beside the object (JSON record; S3 also has tags)."""
    if landscape.storage["kind"] == "local":
        found = list(Path(str(landscape.storage["path"])).rglob(f"{capture_id}.json"))
        return json.loads(found[0].read_text())  # type: ignore[no-any-return]
    from minio import Minio
    s3 = landscape.s3  # type: ignore[attr-defined]
    client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key,
                   secure=False, region=s3.region)
    bucket = str(landscape.storage["bucket"])
    objects = [o.object_name for o in client.list_objects(bucket, prefix="captures/",
                                                         recursive=True)]
    key = next(name for name in objects if name.endswith(f"{capture_id}.pcapng"))
    tags = client.get_object_tags(bucket, key)
    assert tags is not None and len(tags) > 0
    record = key.removesuffix(".pcapng") + ".json"
    return json.loads(client.get_object(bucket, record).read())  # type: ignore[no-any-return]


async def test_single_cf_instance_uploaded(landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    capture_id = await check_roundtrip(
        landscape, tmp_path, ["cf", "my-app", "--instance", "0", "-i", "lo"],
        landscape.cf_home(token, refresh), [(container, "127.0.0.1", b"up-one", "my-app/0:lo")])
    record = stored_record(landscape, capture_id)
    assert record["target"] == f"cf:{landscape.org.name}/{landscape.space.name}/my-app"
    assert record["user_name"] == ALICE.user_name
    assert record["filter"] == "udp and not icmp" and record["packets"] == 20
    assert record["reason"] == "stopped"


async def test_multiple_cf_instances_uploaded(landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    traffic = [(next(iter(cell.containers.values())), "127.0.0.1", f"up-{i}".encode(),
                f"my-app/{i}:lo") for i, cell in enumerate(landscape.cells)]
    await check_roundtrip(landscape, tmp_path, ["cf", "my-app", "-i", "lo"],
                          landscape.cf_home(token, refresh), traffic)


async def test_single_bosh_instance_uploaded(landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.admin"])
    instance = landscape.director.deployments["cf"].instances[0]
    await check_roundtrip(
        landscape, tmp_path, ["bosh", "-d", "cf", "-g", "router", instance.id, "-i", "eth0"],
        landscape.bosh_env(token, refresh),
        [(None, landscape.vms[0].ip, b"vm-up", f"router/{instance.id}:eth0")])


async def test_multiple_bosh_instances_uploaded(landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.admin"])
    instances = landscape.director.deployments["cf"].instances
    await check_roundtrip(
        landscape, tmp_path, ["bosh", "-d", "cf", "-g", "router", "-i", "eth0"],
        landscape.bosh_env(token, refresh),
        [(None, vm.ip, f"vms-{i}".encode(), f"router/{instances[i].id}:eth0")
         for i, vm in enumerate(landscape.vms)])


async def test_other_users_can_neither_list_nor_download(landscape: Landscape,
                                                         tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    capture_id, url, _ = await upload(["cf", "my-app", "--instance", "0", "-i", "lo"],
                                      landscape.cf_home(token, refresh),
                                      [(container, "127.0.0.1", b"mine")])
    carol = landscape.uaa.issue_pair(CAROL)
    env = landscape.cf_home(*carol)
    listed = await trio.run_process([PCAPD, "captures", "list"], env=env, capture_stdout=True,
                                    capture_stderr=True, check=False)
    assert listed.returncode == 0, listed.stderr.decode()
    assert capture_id not in listed.stdout.decode()
    stolen = await download(capture_id, env, tmp_path / "stolen.pcapng")
    assert stolen.returncode == 1
    assert f"no capture {capture_id} of yours" in stolen.stderr.decode()
    assert not (tmp_path / "stolen.pcapng").exists()
    mine = await trio.run_process([PCAPD, "captures", "list"], env=landscape.cf_home(
        token, refresh), capture_stdout=True, capture_stderr=True, check=False)
    assert capture_id in mine.stdout.decode()
    if landscape.storage["kind"] == "local":  # the api serves the file: check its signature
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 200
            tampered = re.sub(r"token=[^&]+", "token=AAAA", url)
            assert (await http.get(tampered)).status_code == 403
            expired = re.sub(r"expires=\d+", "expires=1000", url)
            assert (await http.get(expired)).status_code == 403
            other = url.replace(capture_id, "0" * 32)
            assert (await http.get(other)).status_code in (403, 404)
    else:  # moto checks no signatures: check what a real S3 would
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=" in url


async def test_scripts_list_and_download_by_prefix_to_stdout(landscape: Landscape,
                                                             tmp_path: Path) -> None:
    """``captures list`` on a pipe: no header, raw numbers; ``--json``; ``captures download
    PREFIX -w -`` writes the pcapng to the pipe, as the file download does."""
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    env = landscape.cf_home(token, refresh)
    capture_id, _, _ = await upload(["cf", "my-app/0", "-i", "lo"], env,
                                    [(container, "127.0.0.1", b"script")])
    listed = await trio.run_process([PCAPD, "captures", "list"], env=env, capture_stdout=True,
                                    capture_stderr=True, check=False)
    rows = [line.split("\t") for line in listed.stdout.decode().splitlines()]
    [row] = [r for r in rows if r[0] == capture_id]
    assert rows[0][0] != "id" and row[3].isdigit() and float(row[2]) > 1e9  # raw size, time
    as_json = await trio.run_process([PCAPD, "captures", "list", "--json"], env=env,
                                     capture_stdout=True, capture_stderr=True, check=False)
    [item] = [c for c in json.loads(as_json.stdout) if c["capture_id"] == capture_id]
    assert item["size"] == int(row[3]) and item["target"] == row[1]
    with trio.fail_after(60):
        piped = await trio.run_process(
            [PCAPD, "captures", "download", capture_id[:12], "-w", "-"], env=env,
            capture_stdout=True, capture_stderr=True, check=False)
    assert piped.returncode == 0, piped.stderr.decode()
    out = tmp_path / "piped.pcapng"
    out.write_bytes(piped.stdout)
    assert len(piped.stdout) == item["size"]
    assert per_interface(out, {b"script": "my-app/0:lo"}) == {"my-app/0:lo": 20}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_200_mb_capture_uploads_in_bounded_memory(landscape: Landscape) -> None:
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    env = landscape.cf_home(token, refresh)
    before = peak_rss_mb(landscape.api.popen.pid)
    with trio.fail_after(240):
        process, err = await start_upload(["cf", "my-app", "--instance", "0", "-i", "lo"], env)
        assert process.stderr is not None
        for _ in range(40):  # 40 × 4000 × 1400 B ≈ 224 MB of payload, paced for the ring
            await send_udp(container, "127.0.0.1", 9999, 4000, size=1400, marker=b"bulk")
            await trio.sleep(0.05)
        process.send_signal(2)
        async for chunk in process.stderr:
            err += chunk
        assert await process.wait() == 0, err.decode()
    found = STORED.search(err.decode())
    assert found, err.decode()
    record = stored_record(landscape, found[1])
    assert int(record["size"]) >= 200_000_000, record  # type: ignore[call-overload]
    # What the upload and the capture add to the api's resident set, not the api's size at rest
    # (imports, which grow with features): s3.py's bound, 3 parts and the pipe (~26 MB of RSS
    # measured), plus the capture's queue and merge (~10 MB, as with the local store); ten
    # times less than the 200 MB that went through.
    peak = peak_rss_mb(landscape.api.popen.pid)
    assert peak - before < 50, (f"the api's peak RSS grew by {peak - before:.0f} MB (from "
                                f"{before:.0f} MB) for a {record['size']} byte upload")


async def test_an_upload_cut_short_by_a_vanished_user_is_complete_and_marked(
        landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    env = landscape.cf_home(token, refresh)
    before = set(await listed_ids(env))
    with trio.fail_after(60):
        process, _ = await start_upload(["cf", "my-app", "--instance", "0", "-i", "lo"], env)
        await send_udp(container, "127.0.0.1", 9999, 20, marker=b"gone")
        process.kill()  # the user's laptop dies: no stop, no goodbye
        await process.wait()
        new: set[str] = set()
        while not new:  # the api stops the agents, flushes, finishes the object
            await trio.sleep(0.2)
            new = set(await listed_ids(env)) - before
    (capture_id,) = new
    record = stored_record(landscape, capture_id)
    assert record["reason"] == "stopped"
    out = tmp_path / "cut.pcapng"
    assert (await download(capture_id, env, out)).returncode == 0
    assert per_interface(out, {b"gone": "my-app/0:lo"}) == {"my-app/0:lo": 20}
    assert "Number of stat entries = 1" in run_tool("capinfos", out)


async def listed_ids(env: dict[str, str]) -> list[str]:
    result = await trio.run_process([PCAPD, "captures", "list"], env=env, capture_stdout=True,
                                    capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return [line.split("\t")[0] for line in result.stdout.decode().splitlines()]


def test_stored_captures_expire_and_are_private(landscape: Landscape) -> None:
    """S3: one lifecycle rule of ``retention_days`` on the capture prefix. Local disk: what the
    sweeper deletes lives in directories and files only the api's user may read."""
    if landscape.storage["kind"] == "local":
        root = Path(str(landscape.storage["path"]))
        files = list(root.rglob("*.pcapng"))
        assert files
        for path in files:
            assert path.stat().st_mode & 0o077 == 0, path
            assert path.parent.stat().st_mode & 0o077 == 0, path.parent
        return
    from minio import Minio
    s3 = landscape.s3  # type: ignore[attr-defined]
    client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key,
                   secure=False, region=s3.region)
    rules = client.get_bucket_lifecycle(str(landscape.storage["bucket"])).rules
    ours = [rule for rule in rules if rule.rule_id == "pcapd-captures-expiry"]
    assert len(ours) == 1 and ours[0].expiration.days == 7
