"""The RESP command table: which Redis commands the read proxy answers, and how.

Reads (GET, MGET, EXISTS) go through RedisProxy's read role (L1 -> Redis), as /get/<key> does;
the connection commands that clients and redis-cli send on their own (HELLO, AUTH, CLIENT
SETINFO, COMMAND DOCS, CONFIG GET, SELECT 0) get the answers Redis gives, in the protocol the
connection chose with HELLO (RESP2 until it says HELLO 3). With tokens configured, a connection
must AUTH first, as with Redis's requirepass. Error texts follow Redis 7 (src/server.c
processCommand) so client libraries map them to the same exceptions.
"""

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import redis

from proxy import __version__
from proxy.errors import Forbidden, ProxyError, StoreUnavailable, TooManyRequests
from proxy.resp import introspection
from proxy.resp import replies as wire
from proxy.resp.introspection import Command
from proxy.resp.introspection import shown as _shown
from proxy.resp.protocol import parse_integer
from proxy.serving.auth import AUTH_BLOCKED, Authenticator
from proxy.serving.rate_limit import RateLimiter
from redis_proxy import RedisProxy

log = logging.getLogger(__name__)

REDIS_VERSION = "7.0.0"  # the Redis API level this front end speaks (for clients that check)
PROXY_VERSION = __version__

# Commands that change data or the server: refused by name, so the reply says why.
WRITE_COMMANDS = frozenset("""
    set setnx setex psetex mset msetnx append incr incrby incrbyfloat decr decrby getset getdel
    getex setrange del unlink expire pexpire expireat pexpireat persist rename renamenx move copy
    lpush rpush lpushx rpushx lpop rpop lset linsert lrem ltrim rpoplpush lmove blpop brpop
    sadd srem spop smove sinterstore sunionstore sdiffstore hset hsetnx hmset hdel hincrby
    hincrbyfloat zadd zincrby zrem zremrangebyscore zremrangebyrank zremrangebylex zpopmin
    zpopmax zunionstore zinterstore xadd xdel xtrim pfadd pfmerge setbit bitop geoadd restore
    flushdb flushall swapdb eval evalsha fcall function script publish subscribe psubscribe
    multi exec discard watch shutdown save bgsave bgrewriteaof debug monitor migrate
    replicaof slaveof acl module failover sync psync
""".split())


# Redis 7 (src/server.c processCommand, src/networking.c helloCommand); redis-py maps NOAUTH
# and WRONGPASS to AuthenticationError.
NOAUTH = wire.error("NOAUTH Authentication required.")
NOAUTH_HELLO = wire.error(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP protocol "
    "version at the same time")
WRONGPASS = wire.error("WRONGPASS invalid username-password pair or user is disabled.")

# RATE_LIMIT counts every command as HTTP counts every request, except the connection set-up
# that client libraries send on their own (redis-py: HELLO, then CLIENT SETINFO twice).
RATE_LIMIT_EXEMPT = frozenset({"auth", "hello", "quit", "client"})
# At most this many keys in one MGET or EXISTS, and this many bytes of values in one MGET reply
# (Redis bounds what one client may make it buffer with client-output-buffer-limit).
MAX_KEYS = 10_000
MAX_REPLY_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass
class Session:
    """One connection's state."""

    client_id: int
    peer: str = ""  # the client's address, for the log
    authenticated: bool = True  # False until AUTH when tokens are configured
    protocol: int = wire.RESP2  # HELLO 3 switches the replies to RESP3
    name: bytes | None = None
    closing: bool = False  # QUIT: reply, then close


class RespCommands:
    """Runs one command for a session and returns its encoded reply; never raises for a
    client's mistake or an unreachable Redis (those are -ERR replies)."""

    def __init__(self, proxy: RedisProxy, info_extra: Callable[[], dict[str, dict[str, Any]]] =
                 lambda: {}, clock: Callable[[], float] = time.monotonic,
                 authenticator: Authenticator | None = None,
                 rate_limiter: RateLimiter | None = None, max_keys: int = MAX_KEYS,
                 max_reply_bytes: int = MAX_REPLY_BYTES):
        self.proxy = proxy
        self.info_extra = info_extra
        self.clock = clock
        self.authenticator = authenticator or Authenticator()  # no tokens: open
        self.rate_limiter = rate_limiter  # the HTTP front end's, so a client has one budget
        self.max_keys = max_keys  # the parser drops a longer command; see too_many_arguments
        self.max_reply_bytes = max_reply_bytes
        self.started = clock()
        self._ids = itertools.count(1)

    def new_session(self, peer: str = "") -> Session:
        return Session(client_id=next(self._ids), peer=peer,
                       authenticated=not self.authenticator.enabled)

    def execute(self, session: Session, args: list[bytes]) -> bytes:
        # Clients spell a command in lower or upper case (redis-py: GET, redis-cli: what is
        # typed): those spellings are found by their bytes, without decoding.
        command = _SPELLED.get(args[0])
        if command is not None:
            name = command.name
        else:
            name = args[0].decode("latin-1").lower()
            command = COMMANDS.get(name)
        # Redis's order: an unknown command and a wrong arity are refused before NOAUTH;
        # only commands flagged no-auth (AUTH, HELLO, QUIT) run before authentication.
        if command is None:
            if name in WRITE_COMMANDS:
                if not session.authenticated:
                    return NOAUTH
                return wire.error(f"ERR '{name}' is not supported by redis-proxy (read-only); "
                                  "write to the backing Redis directly")
            shown = " ".join(f"'{_shown(arg)}'" for arg in args[1:])
            return wire.error(f"ERR unknown command '{_shown(args[0])}', "
                              f"with args beginning with: {shown}")
        if not command.arity_ok(len(args)):
            return wire.error(f"ERR wrong number of arguments for '{name}' command")
        if not session.authenticated and "no-auth" not in command.flags:
            return NOAUTH
        if self.rate_limiter is not None and name not in RATE_LIMIT_EXEMPT:
            wait = self.rate_limiter.wait(session.peer)
            if wait:
                return wire.error(f"ERR rate limited, retry after {wait} s")
        try:
            return command.run(self, session, args)
        except StoreUnavailable as exc:
            return wire.error(f"ERR redis unavailable: {exc.detail}")
        except Forbidden as exc:
            return wire.error(f"NOPERM {exc.detail}")  # Redis's code for a key an ACL refuses
        except ProxyError as exc:
            if isinstance(exc.__cause__, redis.ResponseError):
                return wire.error(_relayed(exc.__cause__))  # e.g. WRONGTYPE for GET of a list
            return wire.error(f"ERR {exc.detail}")
        except Exception:
            log.exception("unhandled error for RESP command %r", name)
            return wire.error("ERR internal error in redis-proxy; see its log")

    def too_many_arguments(self, name: bytes, words: int) -> bytes:
        """The reply to a command the parser read and dropped for having over max_keys keys."""
        return wire.error(f"ERR too many keys for '{_shown(name).lower()}': {words - 1}; "
                          f"redis-proxy takes at most {self.max_keys} keys per command, "
                          "send them in several commands")

    # ----- reads ---------------------------------------------------------------------------

    def get(self, session: Session, args: list[bytes]) -> bytes:
        return wire.bulk(self.proxy.get_value(args[1]), session.protocol)

    def mget(self, session: Session, args: list[bytes]) -> bytes:
        values = self.proxy.get_values(list(args[1:]))
        size = sum(len(v) for v in values if v is not None)
        if size > self.max_reply_bytes:
            return wire.error(f"ERR reply too large: the values total {size} bytes, over the "
                              f"{self.max_reply_bytes} bytes one MGET may return; ask for fewer keys")
        return wire.array([wire.bulk(v, session.protocol) for v in values])

    def exists(self, _session: Session, args: list[bytes]) -> bytes:
        return wire.integer(self.proxy.exists(list(args[1:])))

    # ----- connection ----------------------------------------------------------------------

    def ping(self, _session: Session, args: list[bytes]) -> bytes:
        if len(args) > 2:
            return wire.error("ERR wrong number of arguments for 'ping' command")
        return wire.PONG if len(args) == 1 else wire.bulk(args[1])

    def echo(self, _session: Session, args: list[bytes]) -> bytes:
        return wire.bulk(args[1])

    def quit(self, session: Session, _args: list[bytes]) -> bytes:
        session.closing = True
        return wire.OK

    def select(self, _session: Session, args: list[bytes]) -> bytes:
        index = parse_integer(args[1])
        if index is None:
            return wire.error("ERR value is not an integer or out of range")
        if index != 0:
            return wire.error("ERR DB index is out of range (redis-proxy serves database 0 only)")
        return wire.OK

    def auth(self, session: Session, args: list[bytes]) -> bytes:
        """AUTH <password> or AUTH <user> <password> (Redis 6 ACL form)."""
        if len(args) > 3:
            return wire.error("ERR wrong number of arguments for 'auth' command")
        user = args[1] if len(args) == 3 else None
        return self._login(session, user, args[-1]) or wire.OK

    def hello(self, session: Session, args: list[bytes]) -> bytes:
        """HELLO [2|3 [AUTH user password] [SETNAME name]]: switches the connection's protocol
        and answers the server's map, as Redis 7 does (src/networking.c helloCommand)."""
        version, user, password, name = session.protocol, None, None, None
        if len(args) > 1:
            asked = parse_integer(args[1])
            if asked is None:
                return wire.error("ERR Protocol version is not an integer or out of range")
            version = asked
            if version not in (wire.RESP2, wire.RESP3):
                return wire.error("NOPROTO unsupported protocol version")
            options = args[2:]
            while options:
                option = options[0].lower()
                if option == b"auth" and len(options) >= 3:
                    user, password, options = options[1], options[2], options[3:]
                elif option == b"setname" and len(options) >= 2:
                    name, options = options[1], options[2:]
                else:
                    return wire.error(f"ERR Syntax error in HELLO option '{_shown(options[0])}'")
        # Nothing changes unless the credentials (when given) are accepted.
        if password is not None and (refused := self._login(session, user, password)):
            return refused
        if not session.authenticated:
            return NOAUTH_HELLO
        if name is not None:
            if refused := _bad_name(name):
                return refused
            session.name = name or None
        session.protocol = version
        resp = session.protocol
        return wire.mapping([
            (wire.bulk(b"server"), wire.bulk(b"redis")),
            (wire.bulk(b"version"), wire.bulk(REDIS_VERSION.encode())),
            (wire.bulk(b"proto"), wire.integer(resp)),
            (wire.bulk(b"id"), wire.integer(session.client_id)),
            (wire.bulk(b"mode"), wire.bulk(b"standalone")),
            (wire.bulk(b"role"), wire.bulk(b"master")),
            (wire.bulk(b"modules"), wire.EMPTY_ARRAY)], resp)

    def _login(self, session: Session, user: bytes | None, password: bytes) -> bytes | None:
        """None when the credentials are accepted (the session is then authenticated), else
        the error reply; a failed attempt leaves the session as it was, as in Redis."""
        if self.authenticator.enabled:
            try:
                self.authenticator.refuse_if_blocked(session.peer)
            except TooManyRequests as exc:
                # As over HTTP, even a valid token is refused while the address is blocked; the
                # connection is closed so a guesser cannot keep it for its next attempts.
                session.closing = True
                return wire.error(f"ERR {AUTH_BLOCKED}, retry after {exc.headers['Retry-After']} s")
            # The tokens are not tied to users: any user name goes with a valid token, so
            # clients that always send one (redis-py sends `default`) can present it. Bytes
            # that are not ASCII never match a token; latin-1 decodes any bytes without error.
            if self.authenticator.accepts(password.decode("latin-1")):
                session.authenticated = True
                return None
            self.authenticator.failed(session.peer)
            log.info("RESP AUTH refused for client %d from %s: not a configured token",
                     session.client_id, session.peer)  # never the token itself
            return WRONGPASS
        # No tokens: as a Redis whose only user is `default`, with no password.
        if user is None:
            return wire.error("ERR AUTH <password> called without any password configured for "
                              "the default user. Are you sure your configuration is correct?")
        return WRONGPASS if user != b"default" else None

    def client(self, session: Session, args: list[bytes]) -> bytes:
        sub = args[1].lower()
        if sub == b"id" and len(args) == 2:
            return wire.integer(session.client_id)
        if sub == b"getname" and len(args) == 2:
            return wire.bulk(session.name, session.protocol)
        if sub == b"setname" and len(args) == 3:
            if refused := _bad_name(args[2]):
                return refused
            session.name = args[2] or None
            return wire.OK
        if sub == b"setinfo" and len(args) == 4:
            return wire.OK  # library name/version: accepted, not kept
        if sub in (b"id", b"getname", b"setname", b"setinfo"):
            return wire.error(f"ERR wrong number of arguments for 'client|{sub.decode()}' command")
        return wire.error(f"ERR unknown subcommand '{_shown(args[1])}'. Try CLIENT HELP.")

    # ----- introspection -------------------------------------------------------------------

    def command(self, session: Session, args: list[bytes]) -> bytes:
        return introspection.command(COMMANDS, args, session.protocol)

    def config(self, session: Session, args: list[bytes]) -> bytes:
        return introspection.config(args, session.protocol)

    def info(self, session: Session, args: list[bytes]) -> bytes:
        return introspection.info(self.info_sections(), args, session.protocol)

    def info_sections(self) -> dict[str, dict[str, Any]]:
        uptime = int(self.clock() - self.started)
        sections: dict[str, dict[str, Any]] = {
            "server": {"redis_version": REDIS_VERSION, "redis_mode": "standalone",
                       "redis_proxy_version": PROXY_VERSION, "process_id": os.getpid(),
                       "uptime_in_seconds": uptime},
            "clients": {},
            "stats": {f"proxy_{name}": value
                      for name, value in sorted(dict(self.proxy.stats).items())},
        }
        if self.proxy.redis_label:
            sections["server"]["backing_redis"] = self.proxy.redis_label  # password masked
        for title, fields in self.info_extra().items():
            sections.setdefault(title, {}).update(fields)
        return {title: fields for title, fields in sections.items() if fields}


def _relayed(exc: redis.ResponseError) -> str:
    """The backing Redis's own error, for the client. redis-py keeps the code of some errors
    (WRONGTYPE ...) and strips it from others (ERR, NOPERM): those get ERR back."""
    text = str(exc)
    code = text.split(" ", 1)[0]
    return text if code.isupper() and code.isalpha() else f"ERR {text}"


def _bad_name(name: bytes) -> bytes | None:
    """The error for a client name Redis refuses (CLIENT SETNAME, HELLO SETNAME), else None."""
    if any(c <= 0x20 or c >= 0x7F for c in name):
        return wire.error("ERR Client names cannot contain spaces, newlines or special characters.")
    return None


# Redis flags only AUTH, HELLO and QUIT no-auth: all a client may send before it authenticates.
_NO_AUTH = ("fast", "no-auth")
_CONNECTION = ("fast",)
COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("get", 2, RespCommands.get),
    Command("mget", -2, RespCommands.mget),
    Command("exists", -2, RespCommands.exists),
    Command("ping", -1, RespCommands.ping, _CONNECTION),
    Command("echo", 2, RespCommands.echo, _CONNECTION),
    Command("quit", -1, RespCommands.quit, _NO_AUTH),
    Command("select", 2, RespCommands.select, _CONNECTION),
    Command("auth", -2, RespCommands.auth, _NO_AUTH),
    Command("hello", -1, RespCommands.hello, _NO_AUTH),
    Command("client", -2, RespCommands.client, _CONNECTION),
    Command("command", -1, RespCommands.command, ("loading", "stale")),
    Command("config", -2, RespCommands.config, ("admin", "loading")),
    Command("info", -1, RespCommands.info, ("loading", "stale")),
]}
# Each command's name as clients send it, in lower and in upper case.
_SPELLED: dict[bytes, Command] = {spelling: c for c in COMMANDS.values()
                                  for spelling in (c.name.encode(), c.name.upper().encode())}
OTHER = "other"  # the metrics' command label of any command not in COMMANDS
# The label of each spelling in _SPELLED: one dict lookup per command on the hot path.
LABELS: dict[bytes, str] = {spelling: c.name for spelling, c in _SPELLED.items()}


def label_of(word: bytes) -> str:
    """A command's name for the metrics' `command` label: one of COMMANDS, else OTHER, so the
    label's values are a fixed set whatever clients send (Prometheus: bounded cardinality)."""
    command = _SPELLED.get(word)
    if command is not None:
        return command.name
    command = COMMANDS.get(word.decode("latin-1").lower())
    return command.name if command is not None else OTHER
