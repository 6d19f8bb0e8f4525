"""The settings table read back: each setting's flag, its group, and its value or default as
the variable would be written (the command line, --check-config and the generated docs); and
the variables set that look like a misspelled setting's name (warned of at start)."""

import dataclasses
import difflib
import os
from collections.abc import Mapping
from typing import Any

from dotenv import dotenv_values

from load_env import GROUPS, Settings


def flag_of(field: dataclasses.Field[Any]) -> str:
    """The long command-line flag of a setting: HTTP_PORT -> --http-port."""
    env: str = field.metadata["env"]
    return "--" + env.lower().replace("_", "-")


def fields_by_group() -> list[tuple[str, list[dataclasses.Field[Any]]]]:
    """The settings in GROUPS order, each group's in table order."""
    fields = dataclasses.fields(Settings)
    return [(group, [field for field in fields if field.metadata["group"] == group]) for group in GROUPS]


def show_value(field: dataclasses.Field[Any], value: Any) -> str:
    """A setting's value written as its variable would be set (the reverse of its parser)."""
    show = getattr(field.metadata["parse"], "show", None)
    if value is None:
        return ""
    if show is not None:
        shown: str = show(value)
        return shown
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    return str(value)


def default_text(field: dataclasses.Field[Any]) -> str:
    """The default as the docs state it ("empty" when it is the empty value)."""
    return field.metadata.get("shown") or show_value(field, field.default) or "empty"


# How alike an unknown name must be to a setting's to be called a misspelling of it (difflib's
# ratio): REDIS_PROT, CACHE_TTTL and HTTP_WORKER are; PATH or HOME are not.
MISSPELLING_CUTOFF = 0.85


def misspelled(environ: Mapping[str, str] | None = None, env_file: str | None = ".env") -> list[str]:
    """Variables of `env_file` or the environment that are no setting but are close to one's
    name: one warning each, naming where it was found and the setting meant."""
    known = [field.metadata["env"] for field in dataclasses.fields(Settings)]
    sources = [(".env", dotenv_values(env_file) if env_file and os.path.exists(env_file) else {}),
               ("the environment", os.environ if environ is None else environ)]
    warnings = []
    for where, names in sources:
        for name in sorted(names):
            if name in known:
                continue
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=MISSPELLING_CUTOFF)
            if close:
                warnings.append(f"{name} (in {where}) is not a setting; did you mean {close[0]}?")
    return warnings
