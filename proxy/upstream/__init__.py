"""The origin side: the one outbound HTTP fetcher and the policy of which URLs it may fetch."""
