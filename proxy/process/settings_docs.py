"""Docs generated from the settings table: the README's reference, docs/CONFIGURATION.md, `.env`.

`make docs` (`python -m proxy.process.settings_docs`) rewrites them; `--check` only says which are out of date
(exit 1). The table in load_env.py is the one place to edit.
"""

import dataclasses
import os
import re
import sys
from typing import Any

from dotenv import dotenv_values

import load_env
from load_env import GROUPS
from proxy.process.command_line import plain
from proxy.process.settings_table import default_text, fields_by_group, flag_of

README_BEGIN = "<!-- settings:begin -->"
README_END = "<!-- settings:end -->"
GENERATED = "generated from the settings table in load_env.py by `make docs`; edit the table, not this"
FORMATS = ("Durations are seconds (`0.5` allowed); sizes are bytes or Redis units (`64mb` = "
           "64 × 1024 × 1024, `64m` = 64,000,000); lists are comma-separated.")
PRECEDENCE = ("Each setting is read from its command-line flag, else the environment, else `.env`, "
              "else its default; an empty value means the default.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(field: dataclasses.Field[Any]) -> str:
    text = default_text(field)
    # Values are code; the table's own words ("empty", "off", "2 × cores") are not.
    return text if text == "empty" or "shown" in field.metadata else f"`{text}`"


def readme_section() -> str:
    """The README's settings table, between the markers."""
    lines = [README_BEGIN, f"<!-- {GENERATED} section -->", "",
             "| name | meaning | default |", "|---|---|---|"]
    for _group, fields in fields_by_group():
        for field in fields:
            lines.append(f"| `{field.metadata['env']}` | {_cell(field.metadata['meaning'])} | "
                         f"{_cell(_default_cell(field))} |")
    return "\n".join(lines + ["", README_END])


def configuration_md() -> str:
    """docs/CONFIGURATION.md: the full reference, by group, with each flag and format."""
    out = ["# Configuration", "", f"<!-- {GENERATED} file -->", "", PRECEDENCE, FORMATS,
           "A bad value stops the process at start with one line per bad variable and exit status 2; "
           "`--check-config` reports the same problems without starting anything.", ""]
    for group, fields in fields_by_group():
        title, note = GROUPS[group]
        out += [f"## {title}", "", note[0].upper() + note[1:] + ".", "",
                "| variable | flag | format | default | meaning |", "|---|---|---|---|---|"]
        for field in fields:
            flags = ", ".join(f"`{flag}`" for flag in (*field.metadata.get("flags", ()), flag_of(field)))
            out.append(f"| `{field.metadata['env']}` | {flags} | {_cell(field.metadata['parse'].expected)} "
                       f"| {_cell(_default_cell(field))} | {_cell(field.metadata['meaning'])} |")
        out.append("")
    return "\n".join(out)


def _env_value(value: str) -> str:
    if re.fullmatch(r"[^\s#'\"\\]*", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def env_template(values: dict[str, str] | None = None) -> str:
    """`.env`: every setting with a comment, set to `values` (the file's own, so `make docs`
    never drops a local setting) or empty: empty is the default, and leaves Redis embedded."""
    values = dict(values or {})
    out = [f"# redis-proxy settings, {GENERATED} file.",
           "# The environment wins over this file, and a command-line flag over both. Empty means the default.",
           "# " + plain(FORMATS)]
    for group, fields in fields_by_group():
        title, note = GROUPS[group]
        out += ["", f"# --- {title}: {note}"]
        for field in fields:
            env = field.metadata["env"]
            out.append(f"# {plain(field.metadata['meaning'])}; default {plain(default_text(field))}")
            out.append(f"{env}={_env_value(values.pop(env, '') or '')}")
    if values:
        out += ["", "# --- not in the settings table: unknown to redis-proxy"]
        out += [f"{name}={_env_value(value or '')}" for name, value in values.items()]
    return "\n".join(out) + "\n"


def replace_section(readme: str) -> str:
    """`readme` with the text between the settings markers regenerated."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin == -1 or end < begin:
        raise ValueError(f"README.md has no {README_BEGIN} ... {README_END} section")
    return readme[:begin] + readme_section() + readme[end + len(README_END):]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def outputs(root: str) -> dict[str, str]:
    """Each generated file's path under `root`, and what it should hold."""
    env_path = os.path.join(root, ".env")
    env_values = dotenv_values(env_path) if os.path.exists(env_path) else {}
    readme = os.path.join(root, "README.md")
    return {readme: replace_section(_read(readme)),
            os.path.join(root, "docs", "CONFIGURATION.md"): configuration_md(),
            env_path: env_template({k: v or "" for k, v in env_values.items()})}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = os.path.dirname(os.path.abspath(load_env.__file__))
    stale = []
    for path, text in outputs(root).items():
        if os.path.exists(path) and _read(path) == text:
            continue
        stale.append(os.path.relpath(path, root))
        if "--check" not in args:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
    if "--check" in args and stale:
        sys.stderr.write("out of date (run make docs): " + ", ".join(stale) + "\n")
        return 1
    for path in stale:
        sys.stdout.write(f"rewrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
