"""Redis: the client and its health, invalidation tracking for the L1, cross-process fetch locks,
and the launcher of an embedded redis-server."""
