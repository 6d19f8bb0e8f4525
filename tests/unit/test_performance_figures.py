"""The performance figures the docs quote are the ones the cited `make bench` runs measured:
README's Performance table cell by cell against bench/results/20261205-172324.json, and
docs/PERFORMANCE.md's issue 20 table's requests/s against that run and the run before it
(bench/results/20261205-172717-before.json). A figure typed wrong, or a table left behind
when the cited run changes, fails here."""

import json
import os
import re

from servers import ROOT

AFTER = "bench/results/20261205-172324.json"
BEFORE = "bench/results/20261205-172717-before.json"
README_HEAD = "| path | conns | requests/s | ratio | p99 ms | CPU µs per request |"
PERF_HEAD = "| path | conns | before req/s |"


def rows_of(path: str) -> dict[tuple[str, int], dict]:
    with open(os.path.join(ROOT, path)) as report:
        return {(row["row"], row["connections"]): row for row in json.load(report)["rows"]}


def table(text: str, head: str) -> list[list[str]]:
    start = text.index(head)
    lines = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def bench_name(label: str) -> str:
    name = re.sub(r" \((the ceiling|the machine)\)", "", label.replace("`", ""))
    if name.startswith("RESP GET -P "):
        return name.replace(", L1 hit", ", proxy, L1 hit")
    return name


def numbers(cell: str) -> list[float]:
    """The figures of a cell such as `1.125 / 1.362 × ceiling` or `25,294 / 25,944`."""
    return [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\.?\d*", cell.split("×")[0])]


def test_the_readmes_performance_table_is_the_cited_runs_figures():
    with open(os.path.join(ROOT, "README.md")) as readme:
        text = readme.read()
    assert f"`{AFTER}`" in text
    measured = rows_of(AFTER)
    checked = 0
    for label, conns, rps, ratio, p99, cpu in table(text, README_HEAD):
        name = bench_name(label)
        for i, c in enumerate(int(n) for n in numbers(conns)):
            row = measured[(name, c)]
            assert numbers(rps)[i] == round(row["rps"]), (label, c)
            ratios = numbers(ratio)  # one "1" for a reference row of both connection counts
            assert ratios[i if len(ratios) > 1 else 0] == (row["ratio"] if row["ratio"] is not None
                                                           else 1), (label, c)
            assert numbers(p99)[i] == round(row["p99_ms"], 3), (label, c)
            assert numbers(cpu)[i] == row["cpu_us"], (label, c)
            checked += 1
    assert checked == len(measured) - 2  # every row but Redis's own (named in the RESP rows)


def test_performance_md_issue_20_table_has_both_runs_requests_per_second():
    with open(os.path.join(ROOT, "docs/PERFORMANCE.md")) as doc:
        text = doc.read()
    before, after = rows_of(BEFORE), rows_of(AFTER)
    names = {"stdlib ceiling": "stdlib ThreadingHTTPServer, fixed body",
             "reverse proxy GET, Redis hit (L1 off)": "reverse proxy GET, Redis hit (L1 off, distinct paths)",
             "reverse proxy GET, miss": "reverse proxy GET, miss (upstream fetch and store)",
             "GET /?url=&key=, miss": "GET /?url=&key=, miss (upstream fetch and store)",
             "RESP GET, L1 hit, × Redis": "RESP GET -P 1, proxy, L1 hit",
             "RESP GET -P 16, × Redis -P 16": "RESP GET -P 16, proxy, L1 hit",
             "HTTP_WORKERS=1, /get/ L1 hit": "GET /get/<key>, L1 hit, HTTP_WORKERS=1",
             "HTTP_WORKERS=2, /get/ L1 hit": "GET /get/<key>, L1 hit, HTTP_WORKERS=2"}
    checked = 0
    for cells in table(text, PERF_HEAD):
        label = cells[0].replace("`", "")
        if not cells[2]:
            continue  # the × nginx line: ratios only
        name = names.get(label) or re.sub(r"Redis hit \(L1 off\)", "Redis hit (L1 off, distinct keys)", label)
        for i, c in enumerate(int(n) for n in numbers(cells[1])):
            assert numbers(cells[2])[i] == round(before[(name, c)]["rps"]), (label, c)
            assert numbers(cells[6])[i] == round(after[(name, c)]["rps"]), (label, c)
            checked += 1
    assert checked == 28  # 14 rows of two connection counts
