"""The fault suite keeps its own count. Each module marks its cases with a category
(``pytestmark = pytest.mark.fault("names")``); at the end pytest prints, per category, how many
cases were tried and how many passed, and the figures the tests recorded with ``record_property``
(the kill tests' orphans, leaked directories and readable runs). docs/reliability.md records them.

    nice -n 19 python3 -m pytest -p no:cacheprovider tests/faults
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from helpers import write_suite

CATEGORY = "fault"
FIRST = '''
from pathlib import Path

def time_first():
    Path("first-ran").touch()
time_first.warmup_time = 0
time_first.number = 1
time_first.repeat = 2
'''


@pytest.fixture
def first_benchmark(tmp_path: Path) -> Path:
    """A project with suites/first.py, a benchmark that leaves ``first-ran`` when it runs: whether a
    fault was found before anything ran."""
    write_suite(tmp_path / "suites", "first.py", FIRST)
    return tmp_path
# A case's outcome is its worst phase's: a setup error or a failed teardown fails the case.
RANK = {"passed": 0, "skipped": 1, "xfailed": 2, "failed": 3}


class Tally:
    def __init__(self) -> None:
        self.category: dict[str, str] = {}  # test id -> category
        self.outcome: dict[str, str] = {}
        self.figures: list[tuple[str, str]] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marker = item.get_closest_marker(CATEGORY)
            if marker is not None:
                self.category[item.nodeid] = marker.args[0]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.category:
            return
        outcome = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
        if report.when == "call" or outcome != "passed":
            previous = self.outcome.get(report.nodeid, "passed")
            self.outcome[report.nodeid] = max(previous, outcome, key=RANK.__getitem__)
        self.figures += [(name, str(value)) for name, value in report.user_properties if report.when == "call"]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.outcome:
            return
        counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(RANK, 0))
        for nodeid, outcome in self.outcome.items():
            counts[self.category[nodeid]][outcome] += 1
        write = terminalreporter.write_line
        terminalreporter.section("fault suite")
        write("| category | tried | passed | known failures (xfail) | failed |")
        write("|---|---|---|---|---|")
        for category, n in sorted(counts.items()):
            tried = sum(n.values()) - n["skipped"]
            write(f"| {category} | {tried} | {n['passed']} | {n['xfailed']} | {n['failed']} |")
        total = {key: sum(n[key] for n in counts.values()) for key in RANK}
        write(f"| all | {sum(total.values()) - total['skipped']} | {total['passed']} | {total['xfailed']} "
              f"| {total['failed']} |")
        if total["skipped"]:
            write(f"skipped (not tried on this machine): {total['skipped']}")
        for name, value in self.figures:
            write(f"{name}: {value}")


def pytest_configure(config: pytest.Config) -> None:
    """Also called for this conftest when it is found during collection, as under a plain `pytest`."""
    config.addinivalue_line("markers", f"{CATEGORY}(category): a case of the fault suite, counted by category")
    config.pluginmanager.register(Tally(), "fault-tally")
