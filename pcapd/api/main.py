"""``pcapd api --config FILE``: serve clients until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import logging
from functools import partial

from pcapd.api.server import Api, PlatformResolver, serve_api
from pcapd.config import ApiConfig
from pcapd.transport.service import serve_until_signalled

log = logging.getLogger("pcapd.api")


async def run_api(config: ApiConfig) -> None:
    api = Api(config, PlatformResolver())
    await serve_until_signalled("api", config.id, partial(serve_api, api), api,
                                config.drain_timeout, log)
