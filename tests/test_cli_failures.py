"""Every command through its failure paths, as a user or an operator meets them (issue 13).

Each case runs the console script as a child process and fails on any ``Traceback`` (or the
CLI's last-resort "internal error" line): one line on stderr says what was wrong and what to
do. Then the ones that need a peer: a gorouter that answers 404 ``unknown_route`` or 502, an
api that accepts and stays silent (signals while connecting, also with SIGINT ignored as in a
script's background job), a terminal for ``-w -`` (a pty), and a reader that closes the pipe.
"""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.client.cli_logins import cf_document, write_bosh_config, write_cf_config
from tests.fakes import ALICE, FakeUAA
from tests.silent import SilentServer

PCAPD = os.environ.get("PCAPD_EXE") or str(Path(sys.executable).with_name("pcapd"))
SIGNAL_PROMPTNESS = 3.0
"""Seconds a signalled pcapd may take to exit (it should be at once; the machine is shared)."""


def run(*args: str, env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PCAPD, *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env, stdin=stdin)


SAID_BEFORE = ("connecting to ", "refreshing your access token ", "pcapd: warning: ", "{")
"""Lines that may come before the error: what pcapd does, warnings, a service's JSON log."""


def assert_one_clear_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert result.stderr.strip(), "a failure says why"
    errors = [line for line in result.stderr.splitlines() if not line.startswith(SAID_BEFORE)]
    assert len(errors) == 1, result.stderr  # one line says what is wrong
    assert len(errors[0]) < 1000, errors


@pytest.fixture(scope="module")
def cf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A cf login and a bosh login to environment ``lab`` (tokens valid for ten minutes:
    no refresh, no UAA asked) with nothing deployed behind them."""
    home = tmp_path_factory.mktemp("cf-home")
    with FakeUAA() as uaa:
        access, refresh = uaa.issue_pair(ALICE)
        write_cf_config(home, cf_document(uaa.url, access, refresh))
        write_bosh_config(home / ".bosh" / "config", [{
            "url": f"https://127.0.0.1:{closed_port()}", "alias": "lab",
            "access_token": uaa.issue(ALICE, client_id="bosh_cli", scopes=["bosh.admin"]),
            "access_token_type": "bearer", "refresh_token": refresh}])
    env = {**os.environ, "CF_HOME": str(home), "HOME": str(home),
           "BOSH_CONFIG": str(home / ".bosh" / "config")}
    for name in ("PCAPD_API", "BOSH_ENVIRONMENT", "BOSH_DEPLOYMENT", "BOSH_CLIENT"):
        env.pop(name, None)
    return env


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Router(BaseHTTPRequestHandler):
    """gorouter's answers when nothing is registered for the route, or its backend fails."""

    def do_GET(self) -> None:
        code = int(self.path.strip("/").split("/")[0] or 404)
        error = "unknown_route" if code == 404 else "endpoint_failure (connection refused)"
        body = f"{code} Requested route ('pcap.sys.example.com') does not exist.\n".encode()
        self.send_response(code)
        self.send_header("X-Cf-Routererror", error)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def router() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Router)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def silent_api() -> Iterator[str]:
    with SilentServer() as server:
        yield f"http://127.0.0.1:{server.port}"


# --- the sweep: every command, its failure paths, never a traceback ------------------------------


def failure_cases(tmp: Path, router: str) -> list[tuple[str, list[str]]]:
    """(what, argv) for every command's failure paths that need no login and no root."""
    existing = tmp / "existing.pcapng"
    existing.write_bytes(b"keep me")
    garbage = tmp / "garbage.pcapng"
    garbage.write_bytes(b"not a capture at all")
    bad_yaml = tmp / "bad.yml"
    bad_yaml.write_text("id: [unclosed\n")
    closed = f"http://127.0.0.1:{closed_port()}"
    return [
        ("version with an extra word", ["version", "extra"]),
        ("capture local: bad filter", ["capture", "local", "-f", "tcp port", "-w", "x"]),
        ("capture local: -w in a missing directory", ["capture", "local", "-w", "/nonexistent/x"]),
        ("capture local: -w an existing file", ["capture", "local", "-w", str(existing)]),
        ("capture local: bad --agent", ["capture", "local", "--agent", "h:99999", "--certs", "/"]),
        ("capture local: --agent without --certs", ["capture", "local", "--agent", "h"]),
        ("capture local: snaplen too large", ["capture", "local", "-s", "300000", "-w", "x"]),
        ("capture cf: api refuses connections", ["capture", "cf", "app", "--api", closed,
                                                 "-w", str(tmp / "a")]),
        ("capture cf: gorouter 404", ["capture", "cf", "app", "--api", f"{router}/404",
                                      "-w", str(tmp / "a")]),
        ("capture cf: gorouter 502", ["capture", "cf", "app", "--api", f"{router}/502",
                                      "-w", str(tmp / "a")]),
        ("capture cf: --cacert missing", ["capture", "cf", "app", "--api", "https://x",
                                          "--cacert", "/nonexistent", "-w", str(tmp / "a")]),
        ("capture cf: --api not a URL", ["capture", "cf", "app", "--api", "ftp://x", "-w", "a"]),
        ("capture bosh: no bosh login", ["capture", "bosh", "-d", "cf", "-g", "router", "-e",
                                         "nowhere", "--api", router, "-w", str(tmp / "b")]),
        ("capture bosh: gorouter 404", ["capture", "bosh", "-d", "cf", "-g", "router", "-e",
                                        "lab", "--api", f"{router}/404", "-w", str(tmp / "b")]),
        ("capture bosh: gorouter 502", ["capture", "bosh", "-d", "cf", "-g", "router", "-e",
                                        "lab", "--api", f"{router}/502", "-w", str(tmp / "b")]),
        ("capture bosh: api refuses", ["capture", "bosh", "-d", "cf", "-g", "router", "-e",
                                       "lab", "--api", closed, "-w", str(tmp / "b")]),
        ("capture bosh: -w an existing file", ["capture", "bosh", "-d", "cf", "-g", "router",
                                               "-e", "lab", "--api", router, "-w",
                                               str(existing)]),
        ("record start: api refuses", ["record", "start", "cf", "app", "--keep", "10m",
                                       "--api", closed]),
        ("record start: gorouter 404", ["record", "start", "cf", "app", "--keep", "10m",
                                        "--api", f"{router}/404"]),
        ("record start: gorouter 502", ["record", "start", "bosh", "-d", "cf", "-g", "router",
                                        "-e", "lab", "--keep", "10m", "--api",
                                        f"{router}/502"]),
        ("record start: no --keep", ["record", "start", "cf", "app", "--api", closed]),
        ("record list: api refuses", ["record", "list", "--api", closed]),
        ("record list: gorouter 404", ["record", "list", "--api", f"{router}/404"]),
        ("record list: gorouter 502", ["record", "list", "--bosh", "-e", "lab", "--api",
                                       f"{router}/502"]),
        ("record save: api refuses", ["record", "save", "0123abcd", "-w", str(tmp / "r"),
                                      "--api", closed]),
        ("record save: gorouter 404", ["record", "save", "0123abcd", "-w", str(tmp / "r"),
                                       "--api", f"{router}/404"]),
        ("record save: gorouter 502", ["record", "save", "0123abcd", "-w", str(tmp / "r"),
                                       "--api", f"{router}/502"]),
        ("record save: -w an existing file", ["record", "save", "0123abcd", "-w",
                                              str(existing), "--api", router]),
        ("record save: -w in a missing directory", ["record", "save", "0123abcd", "-w",
                                                    "/nonexistent/r", "--api", router]),
        ("record save: bad id", ["record", "save", "../../etc", "-w", str(tmp / "r"),
                                 "--api", f"{router}/404"]),
        ("record stop: api refuses", ["record", "stop", "0123abcd", "--api", closed]),
        ("record stop: gorouter 404", ["record", "stop", "0123abcd", "--api", f"{router}/404"]),
        ("record stop: gorouter 502", ["record", "stop", "0123abcd", "--api", f"{router}/502"]),
        ("record stop: bad id", ["record", "stop", "", "--api", f"{router}/404"]),
        ("captures list: gorouter 404", ["captures", "list", "--api", f"{router}/404"]),
        ("captures list: api refuses", ["captures", "list", "--api", closed]),
        ("captures download: -w in a missing directory",
         ["captures", "download", "0123abcd", "-w", "/nonexistent/x", "--api", f"{router}/404"]),
        ("captures download: gorouter 502",
         ["captures", "download", "0123abcd", "-w", str(tmp / "d"), "--api", f"{router}/502"]),
        ("captures download: existing file",
         ["captures", "download", "0123abcd", "-w", str(existing), "--api", router]),
        ("merge: missing input", ["merge", "-w", str(tmp / "m"), "/nonexistent.pcapng"]),
        ("merge: not a capture", ["merge", "-w", str(tmp / "m"), str(garbage)]),
        ("merge: existing output", ["merge", "-w", str(existing), str(garbage)]),
        ("merge: output in a missing directory", ["merge", "-w", "/nonexistent/m", str(garbage)]),
        ("certs init: unwritable place", ["certs", "init", "/proc/pcapd-certs"]),
        ("agent: missing config", ["agent", "--config", "/nonexistent.yml"]),
        ("agent: bad YAML", ["agent", "--config", str(bad_yaml)]),
        ("agent --check: bad YAML", ["agent", "--config", str(bad_yaml), "--check"]),
        ("api: missing config", ["api", "--config", "/nonexistent.yml"]),
        ("api --check: bad YAML", ["api", "--config", str(bad_yaml), "--check"]),
        ("extcap: unknown interface", ["extcap", "--extcap-config", "--extcap-interface", "x"]),
        ("extcap: no question", ["extcap"]),
    ]


def test_no_command_shows_a_traceback_on_failure(cf_env: dict[str, str], router: str,
                                                 tmp_path: Path) -> None:
    for what, argv in failure_cases(tmp_path, router):
        result = run(*argv, env=cf_env)
        try:
            assert_one_clear_failure(result)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {' '.join(argv)}") from exc
    assert (tmp_path / "existing.pcapng").read_bytes() == b"keep me"


def test_no_login_is_one_line_for_every_remote_command(tmp_path: Path) -> None:
    env = {**os.environ, "CF_HOME": str(tmp_path), "HOME": str(tmp_path),
           "BOSH_CONFIG": str(tmp_path / "none")}
    for argv in (["capture", "cf", "app", "-w", str(tmp_path / "x")],
                 ["capture", "bosh", "-d", "d", "-g", "g", "-e", "e", "-w", str(tmp_path / "x")],
                 ["captures", "list"], ["captures", "download", "abc"]):
        result = run(*argv, env=env)
        assert_one_clear_failure(result)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- 2. gorouter's answers name the URL, the status and what to do -------------------------------


def remote_commands(tmp: Path) -> list[list[str]]:
    """Every command that asks an api, as far as the api's address is concerned."""
    return [["capture", "cf", "my-app", "-w", str(tmp / "x.pcapng")],
            ["capture", "bosh", "-d", "cf", "-g", "router", "-e", "lab", "-w",
             str(tmp / "b.pcapng")],
            ["captures", "list"], ["captures", "download", "0123abcd", "-w",
                                   str(tmp / "d.pcapng")],
            ["record", "start", "cf", "my-app", "--keep", "10m"],
            ["record", "list"], ["record", "save", "0123abcd", "-w", str(tmp / "r.pcapng")],
            ["record", "stop", "0123abcd"]]


@pytest.mark.parametrize("status", [404, 502])
def test_gorouter_answers_are_one_line_with_status_and_router_error(
        cf_env: dict[str, str], router: str, tmp_path: Path, status: int) -> None:
    api = f"{router}/{status}"
    for argv in remote_commands(tmp_path):
        result = run(*argv, "--api", api, env=cf_env)
        assert_one_clear_failure(result)
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith(f"pcapd: error: {api} (from --api) answered HTTP {status}, "
                                "X-Cf-Routererror: "), error
        assert ("is pcapd deployed there? use --api URL or PCAPD_API" in error if status == 404
                else "is pcapd's api running?" in error), error
    assert list(tmp_path.iterdir()) == []


def test_an_api_nobody_listens_at_is_one_line_naming_it(cf_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    api = f"http://127.0.0.1:{closed_port()}"
    for argv in remote_commands(tmp_path):
        result = run(*argv, "--api", api, env=cf_env)
        assert_one_clear_failure(result)
        assert result.stderr.strip().splitlines()[-1] == (
            f"pcapd: error: cannot connect to {api} (from --api): Connection refused: is the "
            "address right, and pcapd's api running there? use --api URL or PCAPD_API for "
            "another address"), (argv, result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_download_into_a_missing_directory_is_refused_before_asking(cf_env: dict[str, str],
                                                                    silent_api: str) -> None:
    started = time.monotonic()
    result = run("captures", "download", "0123abcd", "-w", "/nonexistent/x", "--api", silent_api,
                 env=cf_env)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("pcapd: error: -w /nonexistent/x: no directory /nonexistent: "
                             "create it first, or choose another path\n")
    assert time.monotonic() - started < 10  # the silent api was never waited for


def test_a_service_with_a_missing_key_file_names_the_key_and_path(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert run("certs", "init", str(certs)).returncode == 0
    config = tmp_path / "agent.yml"
    config.write_text(f"id: router/0\ntls: {{certificate: {certs}/agent.crt, "
                      f"private_key: {certs}/gone.key, client_ca: {certs}/ca.crt}}\n")
    result = run("agent", "--config", str(config))
    assert_one_clear_failure(result)
    assert f"tls.private_key: {certs}/gone.key: no such file" in result.stderr, result.stderr
    assert "None" not in result.stderr


def test_a_hostile_config_is_checked_in_one_line_each_without_a_hang(tmp_path: Path) -> None:
    """A config file is input too: a key given twice deep inside is named by its path, and a
    document of nested aliases (a 'billion laughs') or an alias of its own ancestor is read
    in one pass, through ``pcapd agent --check`` as an operator runs it."""
    duplicate = tmp_path / "duplicate.yml"
    duplicate.write_text("id: router/0\nlisten:\n  port: 1\n  port: 2\n")
    result = run("agent", "--check", "--config", str(duplicate))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "listen.port: duplicate key (lines 3 and 4)" in result.stderr, result.stderr
    laughs = tmp_path / "laughs.yml"
    laughs.write_text("id: router/0\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
        for i in range(12)) + "me: &me [*me]\n")
    result = run("agent", "--check", "--config", str(laughs))  # run() gives up after 60 s
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "duplicate" not in result.stderr and "unknown key" in result.stderr, result.stderr


def test_an_api_with_a_missing_key_file_names_the_key_and_path(tmp_path: Path) -> None:
    """What lands in the BOSH job's log: the config key and the path, in one line."""
    certs = tmp_path / "certs"
    assert run("certs", "init", str(certs)).returncode == 0
    config = tmp_path / "api.yml"
    config.write_text(
        f"id: pcap-api/0\nlisten: {{address: 127.0.0.1, port: {closed_port()}}}\n"
        f"agents: {{tls: {{certificate: {certs}/api-client.crt, "
        f"private_key: {certs}/gone.key, ca: {certs}/ca.crt}}}}\n"
        "bosh: {director: 'https://127.0.0.1:25555'}\n"
        f"storage: {{kind: local, path: {tmp_path}/store}}\n")
    result = run("api", "--config", str(config))
    assert_one_clear_failure(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("pcapd: error")]
    assert errors == [f"pcapd: error: {config}: agents.tls.private_key: {certs}/gone.key: "
                      "no such file — create it or fix the path"], result.stderr
    assert "None" not in result.stderr


# --- 3. signals while connecting, also when started with SIGINT ignored --------------------------


IGNORING_SIGINT = ["bash", "-c", 'trap "" INT; exec "$@"', "bash"]
"""Runs a command with SIGINT ignored, as bash starts ``pcapd … &`` in a script."""


def signalled_after_first_line(args: list[str], env: dict[str, str], signum: int,
                               wait: Callable[[], None]) -> tuple[str, int, float, str]:
    """``pcapd ARGS`` as a script's background job (SIGINT ignored): once it printed its first
    line and ``wait`` returned, sent ``signum``; (that line, exit status, seconds from the
    signal to the exit, the rest of stderr)."""
    process = subprocess.Popen([*IGNORING_SIGINT, PCAPD, *args], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        first = process.stderr.readline().decode()
        wait()
        sent = time.monotonic()
        process.send_signal(signum)
        status = process.wait(timeout=30)
        took = time.monotonic() - sent
        return first, status, took, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_connecting_exits_130_at_once(cf_env: dict[str, str], silent_api: str,
                                                   tmp_path: Path, signum: int) -> None:
    out = tmp_path / "never.pcapng"

    def into_the_connection() -> None:
        time.sleep(0.5)  # (no event to wait for: the connection is another process's)

    first, status, took, rest = signalled_after_first_line(
        ["capture", "cf", "my-app", "--api", silent_api, "-w", str(out)], cf_env, signum,
        into_the_connection)
    assert first == (f"connecting to {silent_api} (from --api) as alice, "  # before connecting
                     "my-org/dev\n"), first
    assert status == 130, rest
    assert took < SIGNAL_PROMPTNESS, took
    assert "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("platform", ["cf", "bosh"])
def test_signal_while_refreshing_the_login_exits_130_at_once(
        silent_api: str, tmp_path: Path, platform: str, signum: int) -> None:
    """An expired token, and a UAA (or, for bosh, the director asked for its UAA) that
    accepts and stays silent: pcapd says at once what it waits for, and a signal ends it."""
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    with FakeUAA() as uaa:
        expired, refresh = uaa.expired(ALICE), uaa.issue_refresh(ALICE)
    with SilentServer() as silent:
        url = f"https://127.0.0.1:{silent.port}"
        if platform == "cf":
            config = write_cf_config(home, cf_document(url, expired, refresh))
            argv = ["capture", "cf", "my-app"]
            first = f"refreshing your access token at {url} (it has expired)\n"
        else:
            config = write_bosh_config(home / ".bosh" / "config", [{
                "url": url, "alias": "lab", "access_token": expired,
                "access_token_type": "bearer", "refresh_token": refresh}])
            argv = ["capture", "bosh", "-d", "cf", "-g", "router", "-e", "lab"]
            first = ("refreshing your access token at the UAA of bosh environment lab "
                     f"({url}) (it has expired)\n")
        env = {**os.environ, "CF_HOME": str(home), "HOME": str(home),
               "BOSH_CONFIG": str(home / ".bosh" / "config")}
        before = config.read_bytes()

        def uaa_asked() -> None:
            assert silent.accepted.wait(30), "pcapd never asked UAA"

        line, status, took, rest = signalled_after_first_line(  # said before UAA is asked
            [*argv, "--api", silent_api, "-w", str(out / "x")], env, signum, uaa_asked)
    assert line == first, line + rest
    assert status == 130, rest
    assert took < SIGNAL_PROMPTNESS, took
    assert rest == "pcapd: interrupted before the capture started: nothing was written\n", rest
    assert list(out.iterdir()) == []
    assert config.read_bytes() == before


# --- 5. words: a terminal is no place for a pcapng; a closed pipe is no user ---------------------


def test_write_to_stdout_on_a_terminal_is_refused(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        for argv in (["capture", "local", "-w", "-"], ["merge", "-w", "-", "/nonexistent"]):
            result = subprocess.run([PCAPD, *argv], stdout=terminal, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, text=True, timeout=60, check=False)
            assert result.returncode == 2, result.stderr
            assert "stdout is a terminal, and a pcapng is binary" in result.stderr
    finally:
        os.close(controller)
        os.close(terminal)
