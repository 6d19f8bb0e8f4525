"""docs/capacity.py: the figures docs/SCALING.md quotes are the ones it computes."""

import importlib.util
import os

import pytest

from servers import ROOT


def load():
    spec = importlib.util.spec_from_file_location("capacity", os.path.join(ROOT, "docs", "capacity.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scaling_doc_table_is_what_the_script_prints(capsys):
    capacity = load()
    assert capacity.main([]) == 0
    printed = capsys.readouterr().out.strip()
    with open(os.path.join(ROOT, "docs", "SCALING.md")) as doc:
        assert printed in doc.read()


def test_a_hot_set_l1_holds_needs_no_redis_reads_for_hits():
    capacity = load()
    small = capacity.plan(10_000, 0.99, 50)
    assert (small.l1_share, small.proxy_cores, small.primaries) == (1.0, 1, 1)
    assert round(small.redis_ops) == 100 * 12 + 100 * 1  # misses x 12 commands + fan-out to its 1 process
    big = capacity.plan(1_000_000, 0.99, 50)
    assert (big.proxy_cores, big.primaries) == (95, 12)


def test_the_small_hot_set_sentence_is_what_the_script_prints(capsys):
    capacity = load()
    assert capacity.main(["--hit-ratio", "0.99", "--hot-set-mb", "50"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    cores = [row[4].strip() for row in rows]
    primaries = [row[8].strip() for row in rows]
    with open(os.path.join(ROOT, "docs", "SCALING.md")) as doc:
        text = " ".join(doc.read().split())
    assert (f"{', '.join(cores[:-1])} and {cores[-1]} proxy cores, "
            f"{', '.join(primaries[:-1])} and {primaries[-1]} primaries") in text


def test_the_help_the_docs_point_to_exits_0_and_names_the_options(capsys):
    capacity = load()
    with pytest.raises(SystemExit) as done:
        capacity.main(["--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    for option in ("--rps", "--hit-ratio", "--hot-set-mb", "--l1-mb", "--maxmemory-mb", "--miss-ms",
                   "--utilisation"):
        assert option in printed
