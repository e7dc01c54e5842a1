"""``pcapd agent --config FILE``: serve until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import logging
from functools import partial

from pcapd.agent.server import Agent, serve_agent
from pcapd.config import AgentConfig
from pcapd.transport.service import serve_until_signalled

log = logging.getLogger("pcapd.agent")


async def run_agent(config: AgentConfig) -> None:
    agent = Agent(config)
    await serve_until_signalled("agent", config.id, partial(serve_agent, config, agent), agent,
                                config.drain_timeout, log)
