"""The settings table drives the docs: README's reference, docs/CONFIGURATION.md and .env are
what `make docs` writes from it, and the shipped .env sets nothing."""

import dataclasses
import io
import os

import pytest
from dotenv import dotenv_values

from load_env import GROUPS, Settings, load_settings
from proxy.process import settings_docs
from proxy.process.settings_table import default_text, fields_by_group
from servers import ROOT

FIELDS = dataclasses.fields(Settings)
ENV_FILE = os.path.join(ROOT, ".env")


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as file:
        return file.read()


@pytest.mark.parametrize("field", FIELDS, ids=lambda field: field.metadata["env"])
def test_every_setting_has_a_group_and_a_one_line_meaning(field):
    assert field.metadata["group"] in GROUPS
    meaning = field.metadata["meaning"]
    assert meaning and "\n" not in meaning and "|" not in meaning


@pytest.mark.parametrize("name", ["README.md", "docs/CONFIGURATION.md", ".env"])
def test_the_generated_file_is_up_to_date(name):
    expected = settings_docs.outputs(ROOT)[os.path.join(ROOT, name)]
    assert read(name) == expected, f"{name} is out of date: run make docs"


def test_make_docs_check_finds_nothing_to_rewrite(capsys):
    assert settings_docs.main(["--check"]) == 0
    assert capsys.readouterr() == ("", "")


def test_the_readme_section_lists_every_setting_and_its_default_once():
    section = read("README.md").split(settings_docs.README_BEGIN)[1].split(settings_docs.README_END)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [f.metadata["env"] for _g, fields in fields_by_group() for f in fields]
    http_port = next(row for row in rows if row.startswith("| `HTTP_PORT` |"))
    assert http_port == "| `HTTP_PORT` | HTTP listen port | `8080` |"


def test_a_stale_readme_section_is_replaced_and_the_rest_kept():
    text = f"intro\n{settings_docs.README_BEGIN}\n| old | table |\n{settings_docs.README_END}\nafter\n"
    once = settings_docs.replace_section(text)
    assert once.startswith("intro\n") and once.endswith("\nafter\n") and "| old |" not in once
    assert settings_docs.replace_section(once) == once
    with pytest.raises(ValueError, match="settings:begin"):
        settings_docs.replace_section("no markers here\n")


def test_the_env_template_comments_every_setting_and_sets_none():
    template = settings_docs.env_template()
    lines = template.splitlines()
    for field in FIELDS:
        env = field.metadata["env"]
        at = lines.index(f"{env}=")
        assert lines[at - 1].startswith("# ") and lines[at - 1].endswith(
            f"; default {default_text(field).replace('`', '')}")
    values = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    assert values == {field.metadata["env"]: "" for field in FIELDS}


def test_the_shipped_env_leaves_every_setting_to_its_default_and_redis_embedded():
    values = dotenv_values(ENV_FILE)
    assert set(values) == {field.metadata["env"] for field in FIELDS}
    assert {name: value for name, value in values.items() if value} == {}, \
        "the shipped .env sets nothing; put local settings in the environment or undo them before committing"
    shipped = load_settings({}, env_file=ENV_FILE)
    assert shipped == load_settings({}, env_file=None) and shipped.redis_configured is False


def test_regenerating_keeps_local_values_and_unknown_names():
    template = settings_docs.env_template({"HTTP_PORT": "9000", "REDIS_PASSWORD": "a b#c'd", "MY_OWN": "1"})
    assert "\nHTTP_PORT=9000\n" in template and template.endswith("\nMY_OWN=1\n")
    path_values = dotenv_values(stream=io.StringIO(template))
    assert (path_values["HTTP_PORT"], path_values["REDIS_PASSWORD"], path_values["MY_OWN"]) == \
        ("9000", "a b#c'd", "1")
