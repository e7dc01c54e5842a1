"""``pcapd agent --config FILE``: serve until SIGTERM/SIGINT, then drain and exit.

On the first signal the agent stops taking captures, asks each running one to stop gracefully
(the api gets its tail, statistics and ``end``) and exits once they are done or
``drain_timeout`` has passed; a second signal exits at once.
"""

from __future__ import annotations

import logging
import signal

import trio

from pcapd.agent.server import Agent, serve_agent
from pcapd.config import AgentConfig
from pcapd.transport.groups import open_nursery

log = logging.getLogger("pcapd.agent")


async def run_agent(config: AgentConfig) -> None:
    agent = Agent(config)
    async with open_nursery() as nursery:
        listeners = await nursery.start(serve_agent, config, agent)
        for listener in listeners:
            host, port, *_ = listener.socket.getsockname()
            log.info("pcapd agent %s listening on %s:%d", config.id, host, port,
                     extra={"event": "listening", "port": port})
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: draining (%d captures running)", signal.Signals(signum).name,
                         len(agent.runs), extra={"event": "draining"})
                break
            agent.stop_all()
            with trio.move_on_after(config.drain_timeout) as drain:
                async with open_nursery() as waiters:
                    waiters.start_soon(_wait_idle, agent, waiters.cancel_scope)
                    async for _ in signals:
                        log.warning("second signal: exiting at once")
                        break
                    waiters.cancel_scope.cancel()
            if drain.cancelled_caught:
                log.warning("drain_timeout of %ss passed: exiting with %d captures",
                            config.drain_timeout, len(agent.runs))
        nursery.cancel_scope.cancel()


async def _wait_idle(agent: Agent, scope: trio.CancelScope) -> None:
    await agent.wait_idle()
    scope.cancel()
