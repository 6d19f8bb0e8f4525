"""Pure caching parts: the stored entry format, key derivation, freshness decisions, the L1 and
single flight. No Redis, no sockets, no settings."""
