"""The command line: one flag per setting, generated from the settings table, and --check-config."""

import argparse
import dataclasses
import os
import textwrap
from collections.abc import Sequence
from typing import Any

from load_env import GROUPS, Settings, default_text, fields_by_group, flag_of, show_value
from proxy.store.connection import mask_url

DESCRIPTION = ("A caching proxy with Redis as its store. Each setting is taken from its flag, "
               "else from the environment, else from .env, else its default.")
EPILOG = "The full reference, by group: docs/CONFIGURATION.md."
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


def setting_help(field: dataclasses.Field[Any]) -> str:
    """One setting's --help text: its meaning, variable, format and default."""
    meta = field.metadata
    text = (f"{plain(meta['meaning'])}. Env {meta['env']}; {meta['parse'].expected}; "
            f"default {plain(default_text(field))}")
    return text.replace("%", "%%")  # argparse formats help with %


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, usage="%(prog)s [--check-config] [--SETTING VALUE ...]",
                                     description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--check-config", action="store_true",
                        help="validate the settings, print the effective configuration with secrets "
                             "masked and exit: 0 when valid, else 2 with the problems")
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
    namespace = build_parser(prog).parse_args(argv)
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
