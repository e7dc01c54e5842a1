"""``pcapd api --config FILE``: serve clients until SIGTERM/SIGINT, then drain and exit.

Draining stops taking captures, stops the running ones gracefully (each client gets its tail,
statistics and ``end``, so every file is complete) and exits when they are done or after
``drain_timeout``; a second signal exits at once.
"""

from __future__ import annotations

import logging
import signal

import trio

from pcapd.api.server import Api, PlatformResolver, serve_api
from pcapd.config import ApiConfig
from pcapd.transport.groups import open_nursery

log = logging.getLogger("pcapd.api")


async def run_api(config: ApiConfig) -> None:
    api = Api(config, PlatformResolver())
    async with open_nursery() as nursery:
        listeners = await nursery.start(serve_api, api)
        for listener in listeners:
            host, port, *_ = listener.socket.getsockname()
            log.info("pcapd api %s listening on %s:%d", config.id, host, port,
                     extra={"event": "listening", "port": port})
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: draining (%d captures running)", signal.Signals(signum).name,
                         len(api.captures), extra={"event": "draining"})
                break
            api.stop_all()
            with trio.move_on_after(config.drain_timeout) as drain:
                async with open_nursery() as waiters:
                    waiters.start_soon(_wait_idle, api, waiters.cancel_scope)
                    async for _ in signals:
                        log.warning("second signal: exiting at once")
                        break
                    waiters.cancel_scope.cancel()
            if drain.cancelled_caught:
                log.warning("drain_timeout of %ss passed: exiting with %d captures",
                            config.drain_timeout, len(api.captures))
        nursery.cancel_scope.cancel()


async def _wait_idle(api: Api, scope: trio.CancelScope) -> None:
    await api.wait_idle()
    scope.cancel()
