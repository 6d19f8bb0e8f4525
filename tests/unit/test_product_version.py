"""One product version: pyproject.toml's is the package's."""

import os
import tomllib

from proxy import __version__
from servers import ROOT


def test_pyproject_version_is_the_package_version():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        assert tomllib.load(handle)["project"]["version"] == __version__ == "0.2.0"
