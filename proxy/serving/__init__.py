"""What the front ends share: socket plumbing and client limits, HTTP/1.1 syntax, bearer-token
auth, rate limits and metrics. Never reads settings."""
