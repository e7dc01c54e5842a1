"""Agents accept only the api's client identity (issue 12, hardening): a certificate from the
CA *with* the clientAuth usage *and* the configured name (``tls.client_name``). Before, any
leaf of the CA was a full api — one without an extended key usage passes OpenSSL's check."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pcapd import certs
from pcapd.agent.server import Agent, serve_agent
from pcapd.proto import StatusReply
from pcapd.transport.link import LinkClosed
from tests.api.inprocess import in_process_configs
from tests.links import agent_status


def leaf(pki: Path, out: Path, name: str, usage: x509.ObjectIdentifier | None,
         san: bool = True) -> tuple[Path, Path]:
    """A certificate of the test's CA (``pki``): common name and DNS SAN ``name``."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs._certificate(name, key.public_key(), ca_key, ca_cert, now=datetime.now(UTC),
                              days=1, sans=[x509.DNSName(name)] if san else [], usage=usage)
    out.mkdir(exist_ok=True)
    crt, pem = out / f"{name}.crt", out / f"{name}.key"
    crt.write_bytes(certs._cert_pem(cert))
    pem.write_bytes(certs._key_pem(key))
    return crt, pem


async def status_as(port: int, ca: Path, certificate: Path, key: Path) -> StatusReply:
    return await agent_status("127.0.0.1", port, ca=ca, certificate=certificate,
                              private_key=key)


async def test_only_the_apis_client_certificate_is_accepted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent_config, _ = in_process_configs(tmp_path)
    pki = tmp_path / "pki"
    ca = pki / "ca.crt"
    others = tmp_path / "others"
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_agent, agent_config, Agent(agent_config))
        port = listeners[0].socket.getsockname()[1]
        # the api's own (pcapd certs init), and a BOSH-style one naming it only in its CN
        await status_as(port, ca, pki / "api-client.crt", pki / "api-client.key")
        await status_as(port, ca, *leaf(pki, others, "pcapd-api", ExtendedKeyUsageOID.CLIENT_AUTH,
                                        san=False))
        caplog.set_level(logging.WARNING)
        refused = {
            "no extended key usage": leaf(pki, others, "pcapd-api", None),
            "another name": leaf(pki, others, "intruder", ExtendedKeyUsageOID.CLIENT_AUTH),
            "a server's": (pki / "agent.crt", pki / "agent.key"),
        }
        for what, (cert, key) in refused.items():
            with pytest.raises(LinkClosed):
                await status_as(port, ca, cert, key)
                pytest.fail(f"the agent accepted {what} certificate")
        nursery.cancel_scope.cancel()
    text = caplog.text
    assert "no clientAuth extended key usage" in text
    assert "names intruder, not the api's pcapd-api (tls.client_name)" in text
