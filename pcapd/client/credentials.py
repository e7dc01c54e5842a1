"""The user's cf or bosh login, borrowed: the access token, its refresh at UAA, the write-back.

Theory of operation. pcapd has no login of its own: ``capture cf`` and ``capture bosh`` use the
tokens the cf and bosh CLIs keep in their config files, and keep those files as the CLIs would.
An access token lives minutes (two for BOSH's ``bosh_cli``), a capture may run for an hour, so:

- before the capture, a token that expires within :data:`REFRESH_MARGIN` is refreshed (blocking
  HTTP, before ``trio.run``); during the capture the client's session refreshes it again shortly
  before each expiry, in a worker thread, and hands the api the new one;
- the expiry is the JWT's ``exp`` claim, read *without* verifying the signature: the client has
  no business (and no key) to verify its own token — the api does that; a token that is not a
  readable JWT is used as it is, and never refreshed ahead of time;
- the refresh is the request the CLI itself sends (reference external-apis §1.5), built with
  requests-oauthlib; the new tokens are written back to the CLI's file atomically (temp file in
  the same directory, same mode, fsync, rename) so ``cf``/``bosh`` go on with them — unless the
  file meanwhile holds another refresh token (the user logged in again): then theirs wins;
- a refresh that cannot succeed (refresh token expired or revoked) is *permanent*: one clear
  line, no retries; one that failed on the way (UAA unreachable, 5xx) may be tried again.

No token, no piece of one and no UAA error description (UAA may quote the token) ever goes into
a message, a log line or a ``repr``.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlencode, urlsplit

import jwt
import requests
from oauthlib.oauth2 import BackendApplicationClient, InsecureTransportError, OAuth2Error
from requests.auth import AuthBase, HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from pcapd.errors import PcapdError, UsageError

log = logging.getLogger(__name__)

REFRESH_MARGIN = 60.0
"""Seconds before expiry at which a token is refreshed (before a capture and during one)."""
HTTP_TIMEOUT = 30.0

GrantType = Literal["refresh_token", "client_credentials"]

_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


class RefreshFailed(PcapdError):
    """The access token could not be refreshed. ``permanent``: trying again will not help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        self.permanent = permanent
        super().__init__(message)


def _claim_time(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _lifetime(token: str) -> tuple[float | None, float | None]:
    """(``iat``, ``exp``) of a JWT, read without verification; None where unknown."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None, None
    return _claim_time(claims, "iat"), _claim_time(claims, "exp")


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), read without verification.

    None when the token is no readable JWT or has no numeric ``exp``.
    """
    return _lifetime(token)[1]


def refresh_time(token: str, margin: float = REFRESH_MARGIN) -> float | None:
    """When ``token`` is due for a refresh, or None if that is unknown.

    ``exp - margin``, but never earlier than halfway through the token's life: a UAA that
    issues tokens shorter than the margin must not be asked for a new one continuously.
    """
    iat, exp = _lifetime(token)
    if exp is None:
        return None
    if iat is not None and iat < exp:
        margin = min(margin, (exp - iat) / 2)
    return exp - margin


def needs_refresh(token: str, now: float, margin: float = REFRESH_MARGIN) -> bool:
    """True if ``token`` expires within ``margin`` seconds of ``now`` (or has expired)."""
    exp = token_expiry(token)
    return exp is not None and exp - now <= margin


@dataclass(frozen=True, repr=False)
class Tokens:
    """A login's tokens. ``access_token`` is the bare JWT; never shown by ``repr``."""

    access_token: str
    token_type: str = "bearer"
    refresh_token: str = ""

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value: ``bearer eyJ…``."""
        return f"{self.token_type or 'bearer'} {self.access_token}"

    def __repr__(self) -> str:
        return (f"Tokens(token_type={self.token_type!r}, "
                f"refresh_token={'<set>' if self.refresh_token else '<none>'})")


def split_authorization(value: str) -> Tokens:
    """``"bearer eyJ…"`` (the cf CLI's ``AccessToken``) → Tokens; a bare token is a bearer one."""
    scheme, sep, token = value.strip().partition(" ")
    if sep and token.strip():
        return Tokens(token.strip(), scheme.lower())
    return Tokens(value.strip())


@dataclass(frozen=True)
class RefreshRequest:
    """One ``POST <uaa>/oauth/token`` as a CLI sends it.

    ``form`` are the fields before ``grant_type`` (the cf CLI repeats its client there), in
    order; ``basic`` the client for HTTP Basic auth, or None to send none.
    """

    token_url: str
    grant_type: GrantType
    form: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    basic: tuple[str, str] | None = field(default=None, repr=False)
    verify: bool | str = True
    login_command: str = "cf login"
    """What the user runs to log in again, for messages."""


class _NoAuth(AuthBase):
    """No ``Authorization`` header (and none from ~/.netrc either): the client is in the form."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class _UaaAnswer(Exception):
    def __init__(self, status: int, error: str | None) -> None:
        self.status = status
        self.error = error
        super().__init__(status, error)


def _check_status(response: requests.Response) -> requests.Response:
    """A compliance hook: a non-200 answer is an error (as in both CLIs), before oauthlib
    tries to read a token out of it."""
    if response.status_code == 200:
        return response
    error = None
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        error = document["error"]
    raise _UaaAnswer(response.status_code, error)


def _quiet_oauth_loggers() -> None:
    """requests-oauthlib and oauthlib log request bodies and token responses at DEBUG."""
    for name in ("requests_oauthlib", "oauthlib"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)


def post_refresh(request: RefreshRequest, refresh_token: str) -> Tokens:
    """Send ``request`` to UAA and return the new tokens; blocking. Raises RefreshFailed.

    The body is built by oauthlib: ``request.form`` first (passed as the body to extend), then
    ``grant_type`` and, for the refresh grant, ``refresh_token`` — byte for byte what the cf
    CLI's sorted ``url.Values`` and the bosh CLI send. ``Accept: application/json`` and the form
    ``Content-Type`` are requests-oauthlib's defaults.
    """
    _quiet_oauth_loggers()
    body = urlencode(request.form)
    auth: AuthBase = HTTPBasicAuth(*request.basic) if request.basic is not None else _NoAuth()
    where = _uaa_name(request.token_url)
    try:
        if request.grant_type == "refresh_token":
            if not refresh_token:
                raise RefreshFailed(f"no refresh token stored: run {request.login_command} "
                                    "again", permanent=True)
            session = OAuth2Session()
            session.register_compliance_hook("refresh_token_response", _check_status)
            # verify: requests takes a CA bundle path too (the stubs say bool only)
            token: dict[str, Any] = session.refresh_token(
                request.token_url, refresh_token=refresh_token, body=body, auth=auth,
                timeout=HTTP_TIMEOUT, verify=request.verify)  # type: ignore[arg-type]
        else:
            client_id = dict(request.form).get("client_id", "")
            session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
            session.register_compliance_hook("access_token_response", _check_status)
            token = session.fetch_token(
                request.token_url, body=body, include_client_id=False, auth=auth,
                timeout=HTTP_TIMEOUT, verify=request.verify)  # type: ignore[arg-type]
    except _UaaAnswer as exc:
        _uaa_refused(exc, where, request.login_command)
    except InsecureTransportError:
        raise RefreshFailed(
            f"refusing to send your refresh token to {where} without TLS (an http:// UAA); "
            "set OAUTHLIB_INSECURE_TRANSPORT=1 to allow it on a test system",
            permanent=True) from None
    except requests.exceptions.SSLError as exc:
        raise RefreshFailed(f"cannot verify the TLS certificate of UAA at {where}: "
                            f"{_reason(exc)}", permanent=True) from None
    except requests.RequestException as exc:
        raise RefreshFailed(f"cannot reach UAA at {where}: {_reason(exc)}",
                            permanent=False) from None
    except (OAuth2Error, ValueError):
        raise RefreshFailed(f"UAA at {where} answered the token refresh with no usable "
                            f"token: run {request.login_command} again", permanent=True) from None
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise RefreshFailed(f"UAA at {where} answered the token refresh without an access "
                            f"token: run {request.login_command} again", permanent=True)
    new_refresh = token.get("refresh_token")
    token_type = token.get("token_type")
    return Tokens(access, token_type if isinstance(token_type, str) and token_type else "bearer",
                  new_refresh if isinstance(new_refresh, str) and new_refresh else refresh_token)


def _uaa_refused(exc: _UaaAnswer, where: str, login: str) -> NoReturn:
    code = exc.error if exc.error is not None and _ERROR_CODE.fullmatch(exc.error) else None
    if exc.status == 401 and code in (None, "invalid_token"):
        raise RefreshFailed(f"your session expired: run {login} again", permanent=True) from None
    what = f"HTTP {exc.status}" + (f" {code}" if code else "")
    if exc.status >= 500 or exc.status == 429:
        raise RefreshFailed(f"UAA at {where} could not refresh the token ({what})",
                            permanent=False) from None
    raise RefreshFailed(f"UAA at {where} refused to refresh the token ({what}): run {login} "
                        "again", permanent=True) from None


def _uaa_name(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests error (the socket's or the TLS library's)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        inner = exc.__cause__ or exc.__context__
        assert inner is not None
        exc = inner
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text.rsplit(": ", 1)[-1] if len(text) > 200 else text or type(exc).__name__


def read_cli_config(path: Path, cli: str, missing: str) -> bytes:
    """The bytes of the ``cli`` CLI's config file; a UsageError naming the file, with
    ``missing`` (what to do) when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no {cli} CLI config here: {missing}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {cli} CLI config: "
                         f"{exc.strerror or exc}") from None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temp file beside it with its mode (and, as root, its
    owner), fsync, rename, fsync the directory. A symlink is followed, not replaced."""
    target = path.resolve()
    st = target.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".pcapd-tmp",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
            if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class Credentials(abc.ABC):
    """A CLI login that pcapd borrows: the current tokens, refreshed and written back.

    ``refresh`` blocks (HTTP, file I/O): call it before ``trio.run`` or in a worker thread. It
    is safe to call from several threads; one refresh runs at a time. This object is what
    :func:`pcapd.client.capture.run_capture` takes as its ``token_source``.
    """

    login_command: str = "cf login"

    def __init__(self, tokens: Tokens, *, margin: float = REFRESH_MARGIN) -> None:
        self._tokens = tokens
        self.margin = margin
        self._lock = threading.Lock()

    @property
    def tokens(self) -> Tokens:
        return self._tokens

    def expires_at(self) -> float | None:
        return token_expiry(self._tokens.access_token)

    def refresh_at(self) -> float | None:
        """When the current access token is due for a refresh (wall clock), or None."""
        return refresh_time(self._tokens.access_token, self.margin)

    def needs_refresh(self, now: float) -> bool:
        return needs_refresh(self._tokens.access_token, now, self.margin)

    def can_refresh(self) -> bool:
        """Whether a refresh may work at all (a refresh token or client credentials are known)."""
        return bool(self._tokens.refresh_token)

    def refresh(self) -> str:
        """Refresh at UAA, write the new tokens back, return the new bare access token."""
        with self._lock:
            old = self._tokens
            new = post_refresh(self.refresh_request(), old.refresh_token)
            self._tokens = new
            try:
                written = self.write_back(old, new)
            except (OSError, ValueError) as exc:
                log.warning("refreshed the access token, but could not save it in %s: %s",
                            self.config_path, getattr(exc, "strerror", None) or exc)
            else:
                if not written:
                    log.info("%s holds another login now: left it as it is", self.config_path)
            log.info("refreshed the access token (valid until %s)", _clock(new.access_token))
            return new.access_token

    def ensure_fresh(self, now: float | None = None,
                     announce: Callable[[str], None] | None = None) -> None:
        """Refresh now if the token expires within the margin (before a capture starts).

        ``announce`` is told first what is about to happen (:meth:`refresh_line`): a UAA that
        hangs must not leave the user looking at nothing.
        """
        now = time.time() if now is None else now
        if not self.needs_refresh(now):
            return
        if not self.can_refresh():
            raise RefreshFailed(f"your session expired: run {self.login_command} again",
                                permanent=True)
        if announce is not None:
            announce(self.refresh_line(now))
        self.refresh()

    def refresh_line(self, now: float) -> str:
        """What a refresh does, said before it starts (no network: the director is not asked
        for its UAA yet): ``refreshing your access token at https://uaa… (it has expired)``."""
        exp = self.expires_at()
        if exp is None:
            state = ""
        elif exp <= now:
            state = " (it has expired)"
        else:
            state = f" (it expires in {max(1, round(exp - now))} s)"
        return f"refreshing your access token at {self.refresh_where()}{state}"

    @abc.abstractmethod
    def refresh_where(self) -> str:
        """Where a refresh goes, for the user (``https://uaa.sys.example.com``)."""

    @property
    @abc.abstractmethod
    def config_path(self) -> Path:
        """The CLI's config file these tokens came from."""

    @abc.abstractmethod
    def refresh_request(self) -> RefreshRequest:
        """How this CLI refreshes (may ask the director for its UAA first; blocking)."""

    @abc.abstractmethod
    def write_back(self, old: Tokens, new: Tokens) -> bool:
        """Store ``new`` in the CLI's file if it still holds ``old``; False if it did not."""


def _clock(token: str) -> str:
    exp = token_expiry(token)
    return "unknown" if exp is None else time.strftime("%H:%M:%S", time.localtime(exp))

