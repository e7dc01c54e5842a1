"""Shared Trio I/O for the roles: TLS contexts and WebSocket glue."""
