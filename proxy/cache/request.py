"""What a client asked with its request, as the core sees it: one value from the front end."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class ClientRequest:
    """The client's side of a URL-role (or reverse-proxy) request.

    `headers`: the header fields the client sent, names lower-case, a repeated field's values
    joined with ", " (RFC 9110 §5.3); read for its conditionals, its Cache-Control request
    directives and Range. `forwarded`: the header fields sent upstream on its behalf (names
    lower-case): empty in the URL role, where every client's upstream request is the same;
    the reverse-proxy mode fills it. The Vary secondary key is computed from `forwarded` plus
    the proxy's own fixed upstream headers, never from `headers`."""

    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    forwarded: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def of(cls, method: str, fields: "list[tuple[str, str]] | Mapping[str, str]",
           forwarded: Mapping[str, str] | None = None) -> "ClientRequest":
        """From header fields as received (pairs, any case, repeats allowed): lower-case
        names, repeated fields combined in order."""
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        combined: dict[str, str] = {}
        for name, value in pairs:
            name = name.lower()
            combined[name] = f"{combined[name]}, {value}" if name in combined else value
        return cls(method.upper(), MappingProxyType(combined),
                   MappingProxyType({k.lower(): v for k, v in (forwarded or {}).items()}))
