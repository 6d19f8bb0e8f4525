"""HTTP-date (RFC 9110 §5.6.7), strictly: IMF-fixdate, and the obsolete rfc850 and asctime forms a
recipient must accept. Anything else is not a date (an `Expires` that is none means stale)."""

import calendar
import re
import time
from email.utils import formatdate

_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# Sun, 06 Nov 1994 08:49:37 GMT
_IMF = re.compile(rf"{_DAY}, (\d{{2}}) {_MONTH} (\d{{4}}) {_TIME} GMT")
# Sunday, 06-Nov-94 08:49:37 GMT
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d{{2}})-{_MONTH}-(\d{{2}}) {_TIME} GMT")
# Sun Nov  6 08:49:37 1994
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """Unix seconds of an HTTP-date, or None when `value` is not one. `now` places an rfc850
    two-digit year: one more than 50 years ahead is the latest past year ending so (§5.6.7)."""
    if value is None:
        return None
    value = value.strip()
    if match := _IMF.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _ASCTIME.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
    elif match := _RFC850.fullmatch(value):
        day, month, short, hour, minute, second = match.groups()
        this_year = time.gmtime(time.time() if now is None else now).tm_year
        candidate = this_year - this_year % 100 + int(short)
        year = str(candidate - 100 if candidate > this_year + 50 else candidate)
    else:
        return None
    fields = (int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second))
    if not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1] and fields[3] <= 23
            and fields[4] <= 59 and fields[5] <= 60):
        return None
    return float(calendar.timegm((*fields, 0, 0, 0)))


def format_http_date(seconds: float) -> str:
    """IMF-fixdate, the one form a sender generates."""
    return formatdate(seconds, usegmt=True)
