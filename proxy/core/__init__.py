"""The core: the URL role (UrlCache) and the read role (ReadCache) over the cache, store and upstream layers."""
