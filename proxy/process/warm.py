"""`redis-proxy warm FILE`: fetch a list of URLs through the proxy core, so they are cached
before the first client asks. One URL a line, optionally a key after a space; `#` comments
and blank lines are skipped, and a bad line is reported with its number and skipped. The
fetches go through RedisProxy.fetch: the same upstream policy, coalescing and storage rules as
a client's request, at most `concurrency` at once, and never more than MAX_FETCHES."""

import dataclasses
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from tqdm import tqdm

from proxy.errors import BadRequest, Forbidden, ProxyError, URITooLong

DEFAULT_CONCURRENCY = 8
# The outcomes the summary counts, in its order.
STORED, FRESH, NOT_STORED, REFUSED, FAILED = "stored", "already fresh", "not stored", "refused", "failed"
OUTCOMES = (STORED, FRESH, NOT_STORED, REFUSED, FAILED)


@dataclasses.dataclass(frozen=True)
class Line:
    number: int
    url: str
    key: str | None


@dataclasses.dataclass
class Summary:
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    bytes: int = 0  # of the bodies fetched and stored
    bad_lines: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        counts = ", ".join(f"{self.counts[outcome]} {outcome}" for outcome in OUTCOMES)
        skipped = len(self.bad_lines)
        return (f"warm-up: {counts}; {self.bytes} bytes stored; {skipped} bad "
                f"line{'' if skipped == 1 else 's'} skipped\n")

    @property
    def ok(self) -> bool:
        """Nothing failed, was refused or skipped: the exit status is 0."""
        return not (self.counts[REFUSED] or self.counts[FAILED] or self.bad_lines)


def read_lines(lines: Iterable[str], summary: Summary) -> list[Line]:
    """The URL lines; a line of more than two fields is bad (noted in `summary`)."""
    found = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) > 2:
            summary.bad_lines.append((number, "expected '<url>' or '<url> <key>', found "
                                              f"{len(fields)} fields"))
            continue
        found.append(Line(number, fields[0], fields[1] if len(fields) == 2 else None))
    return found


def warm(proxy: Any, lines: Iterable[str], *, concurrency: int = DEFAULT_CONCURRENCY,
         errors: TextIO, progress: bool = False, max_fetches: int | None = None) -> Summary:
    """Fetch every URL of `lines` through `proxy` (a RedisProxy); bad lines and failures are
    written to `errors` with their line numbers. `progress`: a tqdm bar on `errors`.
    `max_fetches`: the proxy's MAX_FETCHES, which `concurrency` is lowered to (with a note)."""
    if max_fetches is not None and concurrency > max_fetches:
        # A fetch over MAX_FETCHES waits 1 s for a slot and then fails (503): more threads
        # than slots would turn a slow origin into failed URLs rather than a slower warm-up.
        errors.write(f"warm-up: --concurrency {concurrency} is more than MAX_FETCHES "
                     f"({max_fetches}): {max_fetches} fetches at once\n")
        concurrency = max_fetches
    summary = Summary()
    todo = read_lines(lines, summary)
    lock = threading.Lock()
    bar = tqdm(total=len(todo), unit="url", file=errors, disable=not progress)

    def note(line: Line, outcome: str | None, size: int = 0, why: str = "") -> None:
        with lock:
            if outcome is None:
                summary.bad_lines.append((line.number, why))
            else:
                summary.counts[outcome] += 1
                summary.bytes += size
                if why:
                    bar.write(f"line {line.number}: {line.url}: {outcome}: {why}", file=errors)
            bar.update(1)

    def one(line: Line) -> None:
        try:
            result = proxy.fetch(line.url, line.key)
        except (BadRequest, URITooLong) as exc:  # not a URL the proxy takes: a bad line
            note(line, None, why=exc.detail)
        except Forbidden as exc:
            note(line, REFUSED, why=exc.detail)
        except ProxyError as exc:
            note(line, FAILED, why=exc.detail)
        except Exception as exc:  # noqa: BLE001 - one URL must not stop the others
            note(line, FAILED, why=f"{type(exc).__name__}: {exc}")
        else:
            if result.cache == "STALE" and result.detail == "stale-if-error":
                note(line, FAILED, why="upstream failed; the stale copy stays cached")
            elif result.cache == "BYPASS":
                note(line, FAILED, why="Redis could not be reached: fetched but not stored")
            elif result.cache in ("HIT", "STALE") and not result.forward:
                note(line, FRESH)  # (STALE: within stale-while-revalidate, refreshed meanwhile)
            elif result.stored:
                note(line, STORED, len(result.body))
            else:
                note(line, NOT_STORED, why=f"upstream answered {result.status}, not stored "
                                           "(see Caching semantics)")

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="warm") as pool:
            list(pool.map(one, todo))
    finally:
        bar.close()
    summary.bad_lines.sort()
    for number, why in summary.bad_lines:
        errors.write(f"line {number}: bad line, skipped: {why}\n")
    return summary
