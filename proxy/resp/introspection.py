"""The RESP introspection commands that tools send at start (COMMAND, CONFIG GET, INFO), as
pure functions of the command table and the INFO sections, answered as Redis 7 answers them.
commands.py holds the table and runs them."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from proxy.resp import replies as wire


@dataclasses.dataclass(frozen=True)
class Command:
    """One row of the command table."""

    name: str
    arity: int  # Redis's convention: n = exactly n words (name included), -n = at least n
    run: Callable[..., bytes]  # RespCommands' method: (commands, session, args) -> reply
    flags: tuple[str, ...] = ("readonly", "fast")

    def arity_ok(self, words: int) -> bool:
        return words == self.arity if self.arity > 0 else words >= -self.arity


def shown(arg: bytes) -> str:
    """An argument as Redis quotes it in errors: at most 128 characters."""
    return arg[:128].decode("utf-8", "replace")


def command(table: Mapping[str, Command], args: list[bytes], resp: int) -> bytes:
    """COMMAND, COMMAND COUNT, COMMAND DOCS and COMMAND INFO <name>..."""
    sub = args[1].lower() if len(args) > 1 else b""
    if not sub:
        return wire.array([_command_info(c, resp) for c in table.values()])
    if sub == b"count":
        return wire.integer(len(table))
    if sub == b"docs":
        return wire.mapping([], resp)  # redis-cli then falls back to its built-in help
    if sub == b"info":
        found = [table.get(a.decode("latin-1").lower()) for a in args[2:]]
        return wire.array([_command_info(c, resp) if c else wire.null(resp) for c in found])
    return wire.error(f"ERR unknown subcommand '{shown(args[1])}'. Try COMMAND HELP.")


def config(args: list[bytes], resp: int) -> bytes:
    """CONFIG GET only, for tools that ask at start (redis-benchmark asks for save and
    appendonly): the proxy persists nothing. CONFIG SET is a write."""
    if args[1].lower() != b"get":
        return wire.error("ERR 'config' is not supported by redis-proxy (read-only); "
                          "only CONFIG GET is answered")
    known = {b"save": b"", b"appendonly": b"no", b"databases": b"1"}
    pairs = [(p.lower(), known[p.lower()]) for p in args[2:] if p.lower() in known]
    return wire.mapping([(wire.bulk(k), wire.bulk(v)) for k, v in pairs], resp)


def info(sections: dict[str, dict[str, Any]], args: list[bytes], resp: int) -> bytes:
    """INFO [section ...] of `sections` (title -> fields)."""
    wanted = {a.decode("latin-1").lower() for a in args[1:]}
    if not wanted or wanted & {"all", "everything", "default"}:
        wanted = set(sections)
    parts = []
    for title, fields in sections.items():
        if title in wanted:
            lines = [f"# {title.capitalize()}"] + [f"{k}:{v}" for k, v in fields.items()]
            parts.append("\r\n".join(lines) + "\r\n")
    # Verbatim text in RESP3, as Redis 7 sends it; redis-py and redis-cli read both.
    return wire.verbatim("\r\n".join(parts).encode(), resp)


def _command_info(command: Command, resp: int) -> bytes:
    """COMMAND's per-command reply (name, arity, flags, first key, last key, step, ACL
    categories, tips, key specs, subcommands); Redis 7 sends the flags and the last four as
    sets."""
    keys = {"get": (1, 1, 1), "mget": (1, -1, 1), "exists": (1, -1, 1)}.get(command.name, (0, 0, 0))
    empty = wire.members([], resp)
    return wire.array([wire.bulk(command.name.encode()), wire.integer(command.arity),
                       wire.members([wire.simple(f) for f in command.flags], resp),
                       *[wire.integer(k) for k in keys], empty, empty, empty, empty])
