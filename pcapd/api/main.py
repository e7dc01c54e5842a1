"""``pcapd api --config FILE``: serve clients until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import logging
from functools import partial

from pcapd.api.bosh import BoshResolver
from pcapd.api.cf import CfResolver
from pcapd.api.resolve import PlatformResolver, http_client
from pcapd.api.server import Api, serve_api
from pcapd.config import ApiConfig
from pcapd.store import Store
from pcapd.transport.groups import open_nursery
from pcapd.transport.service import serve_until_signalled

log = logging.getLogger("pcapd.api")


def platform_resolver(config: ApiConfig) -> PlatformResolver:
    """Resolvers for the configured platforms; built before the event loop (reads CA files)."""
    port = config.agents.port
    return PlatformResolver(
        CfResolver(config.cf, http_client(config.cf.ca, what="cf.ca"), port)
        if config.cf else None,
        BoshResolver(config.bosh, http_client(config.bosh.ca, what="bosh.ca"), port)
        if config.bosh else None)


async def run_api(config: ApiConfig, resolver: PlatformResolver, store: Store) -> None:
    """Prepare the store (bucket, lifecycle rule / directory), serve, drain on a signal."""
    await store.prepare()
    if config.external_url is None and config.storage.kind == "local":
        log.warning("external_url is not set: download links point at the listen address "
                    "%s:%d; set it to the api's route (https://pcap.sys.example.com)",
                    config.listen.address, config.listen.port)
    api = Api(config, resolver, store=store)
    async with open_nursery() as nursery:
        await nursery.start(store.serve_maintenance)
        await nursery.start(api.recorder.run)
        await serve_until_signalled("api", config.id, partial(serve_api, api), api,
                                    config.drain_timeout, log)
        nursery.cancel_scope.cancel()
