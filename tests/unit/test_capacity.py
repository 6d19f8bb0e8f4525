"""docs/capacity.py: the figures docs/SCALING.md quotes are the ones it computes."""

import importlib.util
import os

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
    assert (small.l1_share, small.proxy_cores, small.primaries) == (1.0, 4, 1)
    assert round(small.redis_ops) == 100 * 12 + 100 * 4  # misses x 12 commands + fan-out to 4 processes
    big = capacity.plan(1_000_000, 0.99, 50)
    assert (big.proxy_cores, big.primaries) == (306, 38)
