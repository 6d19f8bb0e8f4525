"""RULES_FILE: per-host and per-path rules (TOML `[[rule]]` tables), checked with line numbers,
matched against a request's site host and path; pure: the file's text in, no I/O."""

import dataclasses
import difflib
import fnmatch
import functools
import json
import math
import re
import tomllib
from collections.abc import Iterable
from typing import Any

MAX_SECONDS = 2**31  # RFC 9111 §1.2.2: the largest delta-seconds a cache need understand
TIMING_KEYS = ("ttl", "ttl_min", "ttl_max", "stale_while_revalidate", "stale_if_error")
# The parts decided before the cache is looked in: no response status is known then.
REQUEST_KEYS = ("bypass", "ignore_query", "keep_query", "key_headers")
KEYS = ("host", "path", "status", *TIMING_KEYS, *REQUEST_KEYS)
SECONDS = f"a number of seconds from 0 to {MAX_SECONDS}"
_GLOB = re.compile(r"[*?\[]")  # a path with one of these is a glob, else a prefix
_HOST = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?"
                   r"|\[[0-9a-f:.]+\]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.1: a field name
_SYNTAX_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$|\s*\(at end of document\)$")
_RULE_HEADER = re.compile(r"\s*\[\[\s*(\w+|\"[^\"]*\"|'[^']*')\s*\]\]")
_TABLE_HEADER = re.compile(r"\s*\[\s*(\w+|\"[^\"]*\"|'[^']*')")
_KEY_LINE = re.compile(r"\s*(\w[\w-]*|\"[^\"]*\"|'[^']*')\s*[=.]")


class RulesError(ValueError):
    """The rules file is wrong: `problems`, each `line N: what is wrong; expected ...`."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class Timing:
    """A rule's freshness parts (seconds; None: not set by the rule)."""

    ttl: float | None = None  # freshness of a response that states none
    ttl_min: float | None = None  # bounds on the freshness, stated or default
    ttl_max: float | None = None
    stale_while_revalidate: float | None = None  # in place of STALE_WHILE_REVALIDATE
    stale_if_error: float | None = None  # in place of STALE_IF_ERROR

    def over(self, earlier: "Timing") -> "Timing":
        """`earlier` with what this one sets replacing it."""
        return Timing(*(mine if mine is not None else theirs for mine, theirs in
                        zip(dataclasses.astuple(self), dataclasses.astuple(earlier), strict=True)))


NO_TIMING = Timing()


@dataclasses.dataclass(frozen=True)
class Rule:
    """One `[[rule]]`: where it applies, and what it sets (None: not set)."""

    line: int
    host: str = ""  # "" any; "*.example.com" its subdomains; else exactly this host
    path: str = "/"  # a prefix, or a glob (fnmatch) when it holds *, ? or [
    statuses: frozenset[int] | None = None  # the timing applies to these statuses only
    timing: Timing = NO_TIMING
    bypass: bool | None = None
    ignore_query: tuple[str, ...] | None = None
    keep_query: tuple[str, ...] | None = None
    key_headers: tuple[str, ...] | None = None

    def matches(self, host: str, path: str) -> bool:
        if self.host and not (host.endswith(self.host[1:]) if self.host[0] == "*"
                              else host == self.host):
            return False
        return fnmatch.fnmatchcase(path, self.path) if _GLOB.search(self.path) \
            else path.startswith(self.path)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the rules matching one request decide, merged in file order (a later rule's key
    replaces an earlier one's; ignore_query and keep_query are one setting, the query key)."""

    bypass: bool = False
    keep: bool = False  # True: `query` names the parameters kept; False: those left out
    query: tuple[str, ...] = ()
    key_headers: tuple[str, ...] = ()  # lower case
    timings: tuple[tuple[frozenset[int] | None, Timing], ...] = ()

    def timing(self, status: int) -> Timing:
        """The freshness parts for a response of `status`: the rules' without a status, and
        those whose status lists it, merged in file order."""
        merged = NO_TIMING
        for statuses, timing in self.timings:
            if statuses is None or status in statuses:
                merged = timing.over(merged)
        return merged

    def key_query(self, query: str) -> str:
        """`query` less the parameters the key leaves out (their names as sent: percent-encoded
        but for unreserved characters, RFC 3986 §6.2.2); the request sent keeps them all."""
        if not query or not (self.query or self.keep):
            return query
        return "&".join(item for item in query.split("&")
                        if _named(item.partition("=")[0], self.query) == self.keep)


def _named(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class Rules:
    """The rules of RULES_FILE, in file order."""

    def __init__(self, rules: Iterable[Rule] = ()):
        self.rules = tuple(rules)
        self.match = functools.lru_cache(maxsize=4096)(self._match)  # the hit path asks again

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _match(self, host: str, path: str) -> Decision | None:
        """What the rules matching `host` (the site's, lower case, no port) and `path` decide;
        None when none matches."""
        matched = [rule for rule in self.rules if rule.matches(host, path)]
        if not matched:
            return None
        decision = Decision()
        for rule in matched:
            changes: dict[str, Any] = {}
            if rule.bypass is not None:
                changes["bypass"] = rule.bypass
            if rule.ignore_query is not None or rule.keep_query is not None:
                changes["keep"] = rule.keep_query is not None
                changes["query"] = rule.keep_query if rule.keep_query is not None else rule.ignore_query
            if rule.key_headers is not None:
                changes["key_headers"] = rule.key_headers
            if rule.timing != NO_TIMING:
                changes["timings"] = (*decision.timings, (rule.statuses, rule.timing))
            decision = dataclasses.replace(decision, **changes)
        return decision


NO_RULES = Rules()


def site_host(host: str) -> str:
    """A Host header's host as rules match it: lower case, without port or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


# ----- parsing and checking ----------------------------------------------------------------------


def parse_rules(text: str, max_stale: float | None = None) -> Rules:
    """The rules of a RULES_FILE's `text`; RulesError naming every problem with its line.
    `max_stale`: CACHE_STALE_TTL, which a stale window may not exceed (the entry is gone then)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _SYNTAX_LINE.search(message)
        line = int(found.group(1)) if found and found.group(1) else max(1, len(text.splitlines()))
        what = message[:found.start()] if found else message
        raise RulesError([f"line {line}: not valid TOML: {what}; expected TOML "
                          "(https://toml.io) of [[rule]] tables"]) from exc
    lines = _Lines(text)
    problems: list[str] = []
    for name in doc:
        if name != "rule":
            problems.append(f"line {lines.top(name)}: unknown key {name!r}; expected only "
                            "[[rule]] tables")
    tables = doc.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        problems.append(f"line {lines.top('rule')}: rule is not a list of tables; expected "
                        "[[rule]] tables")
        tables = []
    rules = [_rule(table, lines.rule(index), problems, max_stale) for index, table in enumerate(tables)]
    if problems:
        raise RulesError(sorted(problems, key=lambda problem: int(problem.split()[1].rstrip(":"))))
    return Rules(rules)


class _Lines:
    """Where each `[[rule]]` header and each key of a rule stands in the text (a plain scan:
    tomllib reports no positions for values)."""

    def __init__(self, text: str):
        self.tops: dict[str, int] = {}
        self.rules: list[tuple[int, dict[str, int]]] = []
        keys = self.tops
        for number, line in enumerate(text.splitlines(), 1):
            header = _RULE_HEADER.match(line) or _TABLE_HEADER.match(line)
            if header:
                name = header.group(1).strip("\"'")
                self.tops.setdefault(name, number)
                if name == "rule" and line.lstrip().startswith("[["):
                    self.rules.append((number, {}))
                    keys = self.rules[-1][1]
                else:
                    keys = {}
                continue
            key = _KEY_LINE.match(line)
            if key:
                keys.setdefault(key.group(1).strip("\"'"), number)

    def top(self, name: str) -> int:
        return self.tops.get(name, 1)

    def rule(self, index: int) -> tuple[int, dict[str, int]]:
        return self.rules[index] if index < len(self.rules) else (self.top("rule"), {})


def _shown(value: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    return json.dumps(value, default=str)


def _rule(table: dict[str, Any], where: tuple[int, dict[str, int]], problems: list[str],
          max_stale: float | None) -> Rule:
    header, keys = where

    def problem(key: str | None, what: str, expected: str) -> None:
        problems.append(f"line {keys.get(key, header) if key else header}: {what}; expected {expected}")

    for name in table:
        if name not in KEYS:
            close = difflib.get_close_matches(name, KEYS, n=1)
            problem(name, f"unknown key {name!r} in a [[rule]]" + (f" (did you mean {close[0]}?)"
                                                                   if close else ""),
                    "one of " + ", ".join(KEYS))
    host = table.get("host", "")
    if "host" in table and not (isinstance(host, str) and _HOST.fullmatch(host.lower())):
        problem("host", f"host = {_shown(host)} is not a host name",
                "a host name, or *.example.com for the hosts under example.com")
        host = ""
    path = table.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/") or any(
            char.isspace() or not char.isprintable() for char in path):
        problem("path", f"path = {_shown(path)} is not a path",
                "a path starting with '/' (a prefix, or a glob with *, ? or [...]), percent-encoded")
        path = "/"
    statuses = _statuses(table.get("status"), problem)
    timing = Timing(**{name: _seconds(name, table.get(name), problem) for name in TIMING_KEYS})
    bypass = table.get("bypass")
    if bypass is not None and not isinstance(bypass, bool):
        problem("bypass", f"bypass = {_shown(bypass)} is not true or false", "true or false")
        bypass = None
    ignore = _names("ignore_query", table.get("ignore_query"), problem, "query parameter names "
                    "(globs allowed: \"utm_*\")", re.compile(r"[^&=#\s]+"))
    keep = _names("keep_query", table.get("keep_query"), problem, "query parameter names "
                  "(globs allowed: \"utm_*\")", re.compile(r"[^&=#\s]+"))
    key_headers = _names("key_headers", table.get("key_headers"), problem,
                         "request header names", _TOKEN)
    if ignore is not None and keep is not None:
        later = max(("ignore_query", "keep_query"), key=lambda name: keys.get(name, header))
        problem(later, "both ignore_query and keep_query in one rule",
                "one of them: the parameters left out of the cache key, or the ones kept")
    if timing.ttl_min is not None and timing.ttl_max is not None and timing.ttl_min > timing.ttl_max:
        problem("ttl_min", f"ttl_min = {timing.ttl_min:g} is more than ttl_max = {timing.ttl_max:g}",
                "ttl_min at most ttl_max")
    elif timing.ttl is not None and not (timing.ttl_min or 0) <= timing.ttl <= (
            MAX_SECONDS if timing.ttl_max is None else timing.ttl_max):
        problem("ttl", f"ttl = {timing.ttl:g} is outside ttl_min..ttl_max", "a ttl within them")
    for name in ("stale_while_revalidate", "stale_if_error"):
        window = getattr(timing, name)
        if window is not None and max_stale is not None and window > max_stale:
            problem(name, f"{name} = {window:g} is more than CACHE_STALE_TTL ({max_stale:g}), "
                    "how long an entry is kept past its freshness", "at most CACHE_STALE_TTL")
    if statuses is not None:
        for name in REQUEST_KEYS:
            if name in table:
                problem(name, f"{name} in a rule with status: it is decided before the response "
                        "(and its status) is known", f"{name} in a rule without status")
    return Rule(header, host.lower().rstrip("."), path, statuses, timing, bypass, ignore, keep,
                None if key_headers is None else tuple(name.lower() for name in key_headers))


def _statuses(value: Any, problem: Any) -> frozenset[int] | None:
    if value is None:
        return None
    listed = value if isinstance(value, list) else [value]
    if not listed or not all(type(item) is int and 100 <= item <= 599 for item in listed):
        problem("status", f"status = {_shown(value)} is not a status nor a list of statuses",
                "a status from 100 to 599, or a list of them: [404, 410]")
        return None
    return frozenset(listed)


def _seconds(name: str, value: Any, problem: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problem(name, f"{name} = {_shown(value)} is not a number", SECONDS)
    elif not 0 <= value <= MAX_SECONDS:  # NaN fails both
        problem(name, f"{name} = {_shown(value)} is " + ("negative" if value < 0 else "out of range"),
                SECONDS)
    else:
        return float(value)
    return None


def _names(key: str, value: Any, problem: Any, what: str, form: re.Pattern[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) and form.fullmatch(item)
                                              for item in value):
        problem(key, f"{key} = {_shown(value)} is not a list of names", f"a list of {what}")
        return None
    return tuple(value)
