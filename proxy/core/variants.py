"""The URL role's Vary variants (RFC 9111 §4.1): which stored variant a request selects, where
a response's variant is placed (proxy.store.variants); a mixin of UrlCache, which holds the parts
it uses."""

from collections.abc import Callable
from typing import Any

from proxy.cache.entry import Entry
from proxy.cache.freshness import vary_names
from proxy.cache.representation import normalised
from proxy.core.url_request import UrlLimits, UrlRequest
from proxy.store.variants import variant_key
from proxy.upstream.fetcher import Fetcher

UNREAD = object()  # _read_variant: the URL's key is still to be read


class VariantSelection:
    """Variant selection and placement for UrlCache; the parts below are UrlCache's."""

    fetcher: Fetcher
    limits: UrlLimits
    _read_entry: Callable[[str], tuple[Entry | None, bool]]
    _decoded: Callable[[object], tuple[Entry | None, bool]]

    def _secondary(self, request: UrlRequest) -> dict[str, str]:
        """The request headers as sent upstream, names lower-case, values normalised (RFC 9111
        §4.1): the fetcher's own fixed ones, then the client's forwarded ones."""
        sent = {name.lower(): str(value) for name, value in self.fetcher.session.headers.items()}
        sent.update(request.forwarded)
        return {name: normalised(name, value) for name, value in sent.items()}

    def _vary_of(self, request: UrlRequest, headers: Any) -> dict[str, str | None] | None:
        """The secondary key a response's Vary asks to record; None without Vary."""
        listed = vary_names(headers)
        if request.rule is not None:  # RULES_FILE key_headers: a Vary the origin did not send
            listed += [name for name in request.rule.key_headers if name not in listed]
        if not listed:
            return None
        secondary = self._secondary(request)
        return {name: secondary.get(name) for name in listed}

    def _matches(self, request: UrlRequest, entry: Entry) -> bool:
        """RFC 9111 §4.1: the entry was selected by request headers equal to this request's."""
        if entry.vary is None:
            return True
        secondary = self._secondary(request)
        return all(name != "*" and secondary.get(name) == value for name, value in entry.vary.items())

    def _selected(self, request: UrlRequest, entry: Entry) -> str | None:
        """Where the variant this request selects lives when `entry`, stored at the URL's key, is
        another variant of the URL (proxy.store.variants); None when it is this one or no other
        can be (no Vary, Vary: *, or another URL under an explicit key)."""
        if entry.url != request.canonical or entry.vary is None or "*" in entry.vary \
                or self._matches(request, entry):
            return None
        secondary = self._secondary(request)
        return variant_key(request.redis_key, {name: secondary.get(name) for name in entry.vary})

    def _read_variant(self, request: UrlRequest, first: object = UNREAD) -> tuple[Entry | None, str, bool]:
        """The stored entry for this request's URL, the variant it selects when there is one
        beside the URL's own: (entry, the key it was read at, whether Redis answered).
        `first`: the URL's key as read already (UrlCache._decoded), else it is read here."""
        stored, redis_up = self._read_entry(request.redis_key) if first is UNREAD \
            else self._decoded(first)
        other = None if stored is None else self._selected(request, stored)
        if other is None:
            return stored, request.redis_key, redis_up
        variant, redis_up = self._read_entry(other)
        return (variant, other, redis_up) if variant is not None \
            else (stored, request.redis_key, redis_up)

    def _place(self, redis_key: str, entry: Entry) -> str:
        """Where `entry` (for `redis_key`'s URL) is stored: at the URL's key when nothing else
        of that URL is there, or the variant there is the same one, or either varies on
        nothing, on `*` or on other names (then it replaces what is there); else beside it,
        under the key of its own variant (MAX_VARIANTS bounds how many)."""
        if entry.vary is None or "*" in entry.vary or self.limits.max_variants <= 1:
            return redis_key
        there, _up = self._read_entry(redis_key)
        if there is None or there.url != entry.url or there.vary is None \
                or there.vary.keys() != entry.vary.keys() or there.vary == entry.vary:
            return redis_key
        return variant_key(redis_key, entry.vary)
