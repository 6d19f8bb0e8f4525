"""The settings table read back: each setting's flag, its group, and its value or default as
the variable would be written (the command line, --check-config and the generated docs)."""

import dataclasses
from typing import Any

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
