"""The command line: one flag per setting, generated from the settings table, and --check-config."""

import argparse
import dataclasses
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from load_env import GROUPS, Settings
from proxy import __version__
from proxy.process.settings_table import default_text, fields_by_group, flag_of, show_value
from proxy.store.connection import mask_url

DESCRIPTION = ("A caching proxy with Redis as its store. Each setting is taken from its flag, "
               "else from the environment, else from .env, else its default.")
EPILOG = ("The full reference, by group: docs/CONFIGURATION.md. "
          "'%(prog)s warm FILE' fetches FILE's URLs into the cache ('warm --help').")
WARM = "warm"
WARM_DESCRIPTION = ("Fetch a list of URLs through the proxy's core into the backing Redis (set "
                    "REDIS_URL or its flag): one URL a line, optionally a key after a space; "
                    "'#' comments and blank lines are skipped, a bad line is reported with its "
                    "number and skipped. The upstream policy applies as to a client's request. "
                    "Exits 0 when every URL is stored or already fresh, 1 when any failed, was "
                    "refused or skipped, 2 on a bad setting or an unreadable file.")
DEFAULT_CONCURRENCY = 8
MASK = "***"


def plain(text: str) -> str:
    """A table meaning for a plain-text reader: without Markdown's backticks."""
    return text.replace("`", "")


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help at spaces only, so `comma-separated` or `2xx,404` is never split."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=36)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, width, break_on_hyphens=False)


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line asked for: raw setting values by variable name, and the mode."""

    overrides: dict[str, str]
    check_config: bool = False
    warm_file: str | None = None  # the `warm` subcommand's list of URLs
    concurrency: int = DEFAULT_CONCURRENCY


def setting_help(field: dataclasses.Field[Any]) -> str:
    """One setting's --help text: its meaning, variable, format and default."""
    meta = field.metadata
    text = (f"{plain(meta['meaning'])}. Env {meta['env']}; {meta['parse'].expected}; "
            f"default {plain(default_text(field))}")
    return text.replace("%", "%%")  # argparse formats help with %


def _concurrency(raw: str) -> int:
    value = int(raw) if raw.isdigit() else 0
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 256, got {raw!r}")
    return value


def build_parser(prog: str | None = None, warm: bool = False) -> argparse.ArgumentParser:
    if warm:
        parser = argparse.ArgumentParser(
            prog=f"{prog or os.path.basename(sys.argv[0])} {WARM}",
            usage="%(prog)s FILE [--concurrency N] [--SETTING VALUE ...]",
            description=WARM_DESCRIPTION, epilog=EPILOG.split(". ")[0] + ".",
            formatter_class=_HelpFormatter)
        parser.add_argument("file", metavar="FILE", help="the URLs, one a line: '<url>' or '<url> <key>'")
        parser.add_argument("--concurrency", type=_concurrency, default=DEFAULT_CONCURRENCY,
                            help=f"fetches at once, 1 to 256, at most MAX_FETCHES (lowered to it, with a "
                                 f"note); default {DEFAULT_CONCURRENCY}")
    else:
        parser = argparse.ArgumentParser(prog=prog,
                                         usage="%(prog)s [--check-config] [--SETTING VALUE ...]",
                                         description=DESCRIPTION, epilog=EPILOG,
                                         formatter_class=_HelpFormatter)
        parser.add_argument("--check-config", action="store_true",
                            help="validate the settings, print the effective configuration with "
                                 "secrets masked and exit: 0 when valid, else 2 with the problems; "
                                 "warn of variables that look like misspelled settings")
        parser.add_argument("--version", action="version", version=f"redis-proxy {__version__}",
                            help="print the version and exit")
    for group, fields in fields_by_group():
        title, note = GROUPS[group]
        section = parser.add_argument_group(title, note)
        for field in fields:
            env = field.metadata["env"]
            names = [*field.metadata.get("flags", ()), flag_of(field)]
            # A boolean flag alone means true: --upstream-allow-private.
            extra: dict[str, Any] = {"nargs": "?", "const": "true"} if field.type is bool else {}
            section.add_argument(*names, dest=env, metavar=env, help=setting_help(field), **extra)
    return parser


def parse(argv: Sequence[str] | None = None, prog: str | None = None) -> Options:
    """The command line's options; `--help` and usage errors exit here (0 and 2), as argparse does."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [WARM]:
        namespace = build_parser(prog, warm=True).parse_args(args[1:])
        overrides = {name: value for name, value in vars(namespace).items()
                     if name not in ("file", "concurrency") and value is not None}
        return Options(overrides, warm_file=namespace.file, concurrency=namespace.concurrency)
    namespace = build_parser(prog).parse_args(args)
    overrides = {name: value for name, value in vars(namespace).items()
                 if name != "check_config" and value is not None}
    return Options(overrides, namespace.check_config)


def describe(settings: Settings) -> str:
    """The effective configuration, one `NAME=value` a line by group, secrets masked."""
    lines = []
    for group, fields in fields_by_group():
        lines.append(f"# --- {GROUPS[group][0]}")
        for field in fields:
            value = show_value(field, getattr(settings, field.name))
            if value and field.metadata.get("secret"):
                value = MASK
            elif field.metadata["env"] == "REDIS_URL":
                value = mask_url(value)
            lines.append(f"{field.metadata['env']}={value}")
    return "\n".join(lines) + "\n"


def log_file_problem(path: str) -> str | None:
    """LOG_FILE checked without creating it: a file, or a folder, that can be written."""
    if not path:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path):
        usable = os.path.isfile(path) and os.access(path, os.W_OK)
    else:
        usable = os.path.isdir(folder) and os.access(folder, os.W_OK)
    return None if usable else f"LOG_FILE={path!r}: expected a file that can be opened for appending"
