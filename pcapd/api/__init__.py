"""The api role: authenticate, authorize, fan out to agents, merge, stream or store."""
