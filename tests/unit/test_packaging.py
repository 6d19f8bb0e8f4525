"""pyproject.toml: the same pins as requirements.txt, every product module declared, and the
redis-proxy console script. (`pip install .` in a fresh venv takes ~30 s here: checked by hand,
see the README's Command line section, not in the suite.)"""

import glob
import os
import tomllib

import http_server
from servers import ROOT

# Top-level files that are tools or tests, not part of the installed proxy.
NOT_INSTALLED = {"test", "conftest", "bench", "settings_docs"}


def project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        return tomllib.load(file)


def requirement_pins() -> set[str]:
    with open(os.path.join(ROOT, "requirements.txt")) as file:
        return {line.strip() for line in file if line.strip() and not line.startswith("#")}


def test_declared_dependencies_are_the_requirements_pins():
    declared = project()["project"]["dependencies"] + project()["project"]["optional-dependencies"]["test"]
    assert all("==" in pin for pin in declared)
    assert set(declared) <= requirement_pins(), set(declared) - requirement_pins()


def test_every_product_module_is_declared_for_installation():
    modules = {os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "*.py"))}
    assert set(project()["tool"]["setuptools"]["py-modules"]) == modules - NOT_INSTALLED


def test_the_console_script_is_http_servers_main():
    assert project()["project"]["scripts"] == {"redis-proxy": "http_server:main"}
    assert callable(http_server.main)
