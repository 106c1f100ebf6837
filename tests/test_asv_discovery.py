"""A suite written for asv runs unchanged: found, named, versioned and measured as asv does it.

The suites here are laid out as large asv suites are: an ``asv.conf.json`` (with the comments and
trailing commas asv allows) beside a ``benchmarks/`` package whose modules share code through
``from .common import ...``, a nested package, ``setup_cache``, ``timeraw_`` and ``mem_``
benchmarks, tuple and object parameters, and asv_runner's skip markers.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import statistics
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import assert_one_line_error, run_perfwatch, write_suite

from perfwatch.bench import asvconf, runner, setupcache

CONFIG = """\
{
    // the suite's settings, as asv's quickstart writes them
    "version": 1,
    "project": "demo",
    "repo": ".",
    "branches": ["main"],  /* asv allows comments */
    "benchmark_dir": "benchmarks",
}
"""

COMMON = '''
import os

SIZES = [10, 100]


class Thing:
    """A parameter with the default repr: <benchmarks.common.Thing object at 0x...>."""


def make(n):
    return list(range(n))


class Cached:
    """The setup_cache two classes share (one cache key: this module and line)."""

    def setup_cache(self):
        with open(os.environ["CACHE_LOG"], "a") as log:
            log.write("made\\n")
        with open("data.txt", "w") as data:  # asv runs setup_cache and its users in one cache directory
            data.write("41")
        return {"answer": 41}
'''

LISTS = '''
from asv_runner.benchmarks.mark import skip_benchmark, skip_params_if

from .common import SIZES, Cached, Thing, make

warmup_time = 0  # module-level attributes apply to every benchmark here, as in asv
repeat = 3


class Lists:
    params = [SIZES, [(1, 2), (3, 4)]]
    param_names = ["n", "pair"]

    def setup(self, n, pair):
        self.data = make(n)

    def time_sum(self, n, pair):
        sum(self.data)

    def mem_list(self, n, pair):
        return self.data

    @skip_benchmark
    def time_never(self, n, pair):
        pass

    @skip_params_if([(10, (1, 2))], True)
    def track_len(self, n, pair):
        return len(self.data) + pair[0]


class UsesCache(Cached):
    def track_answer(self, cached):
        return cached["answer"] + 1

    def track_file(self, cached):
        with open("data.txt") as data:
            return float(data.read())


class AlsoUsesCache(Cached):
    def track_again(self, cached):
        return cached["answer"]


def time_objects(thing):
    pass


time_objects.params = [Thing(), Thing()]


class Shapes:
    """Parameter lists as large suites write them: numpy's one parameter whose values are 2 and lists,
    scipy's range of values, and scipy's ``sizes``: the suite's own data, not perfwatch's suite sizes."""

    sizes = range(100, 401, 100)

    def time_columns(self, cols):
        pass

    time_columns.params = [2, [1, 3], [1, 3, 5, 7]]

    def time_ranged(self, name, n):
        pass

    time_ranged.params = [["a", "b"], range(0, 2)]
'''

DEEP = '''
from ..common import make

warmup_time = 0
repeat = 3


def timeraw_fresh():
    """Timed in a fresh interpreter: perfwatch's worker is not loaded there."""
    return "assert 'perfwatch.bench.worker' not in sys.modules", "import sys"


def time_deep():
    make(5)


time_deep.version = "2"
time_deep.pretty_name = "a deep one"
'''


@pytest.fixture
def asv_project(tmp_path: Path) -> Path:
    (tmp_path / "asv.conf.json").write_text(CONFIG)
    benchmarks = tmp_path / "benchmarks"
    write_suite(benchmarks, "__init__.py", "")
    write_suite(benchmarks, "common.py", COMMON)
    write_suite(benchmarks, "lists.py", LISTS)
    write_suite(benchmarks / "nested", "__init__.py", "")
    write_suite(benchmarks / "nested", "deep.py", DEEP)
    return tmp_path


def listed(project: Path, *args: str) -> dict:
    proc = run_perfwatch("list", "--json", *args, cwd=project)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def asv_discovered(root: Path, tmp_path: Path) -> list[dict]:
    """What asv itself discovers in the benchmark dir ``root``, the way `asv run` asks asv_runner."""
    asv_runner_script = pytest.importorskip("asv.runner").BENCHMARK_RUN_SCRIPT
    out, cwd = tmp_path / "asv-discovered.json", tmp_path / "asv-cwd"
    cwd.mkdir()
    subprocess.run([sys.executable, asv_runner_script, "discover", str(root), str(out)], cwd=cwd, check=True,
                   capture_output=True, timeout=120)
    return json.loads(out.read_text())


def stored(project: Path) -> dict:
    [path] = (project / "results").glob("*.json")
    return {b["name"]: b for b in json.loads(path.read_text())["benchmarks"]}


def test_names_versions_and_parameter_labels_are_asvs(asv_project, tmp_path):
    ours = listed(asv_project)["benchmarks"]  # no path: asv.conf.json's benchmark_dir
    theirs = asv_discovered(asv_project / "benchmarks", tmp_path)
    assert {b["asv_name"]: b["version"] for b in ours} == {b["name"]: b["version"] for b in theirs}
    expected_names = set()
    for b in theirs:
        combos = itertools.product(*b["params"]) if b["params"] else [()]
        expected_names |= {b["name"] + (f"({', '.join(f'{n}={v}' for n, v in zip(b['param_names'], c))})" if c else "")
                           for c in combos}
    assert {b["name"] for b in ours} == expected_names
    assert "lists.time_objects(param1=<benchmarks.common.Thing object> (0))" in expected_names
    assert {"lists.Shapes.time_columns(param1=[1, 3])", "lists.Shapes.time_ranged(param1='b', param2=1)"} <= expected_names
    assert {tuple(b["sizes"]) for b in ours if ".Shapes." in b["name"]} == {("quick", "ci", "full")}
    assert {b["asv_name"]: b["setup_cache_key"] for b in ours if b["setup_cache_key"]} == {
        b["name"]: b["setup_cache_key"] for b in theirs if b.get("setup_cache_key")}
    deep = next(b for b in ours if b["asv_name"] == "nested.deep.time_deep")
    assert (deep["version"], deep["pretty_name"], len(deep["code_hash"])) == ("2", "a deep one", 64)
    assert not any("time_never" in b["name"] for b in ours)  # skip_benchmark: not a benchmark at all, as in asv
    # Names hold no address, so a second listing (another process, other addresses) gives the same ones.
    assert [b["name"] for b in listed(asv_project)["benchmarks"]] == [b["name"] for b in ours]
    # A file inside the suite is named as part of it: the asv config above it says where the suite starts.
    inside = listed(asv_project, "benchmarks/nested/deep.py")["benchmarks"]
    assert {b["name"] for b in inside} == {"nested.deep.time_deep", "nested.deep.timeraw_fresh"}


def test_every_kind_runs_with_setup_cache_made_once(asv_project):
    log = asv_project / "cache.log"
    proc = run_perfwatch("run", "--store", "results", cwd=asv_project, env={"CACHE_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    results = stored(asv_project)
    assert log.read_text() == "made\n"  # once for the three benchmarks of two classes that share it
    assert results["lists.UsesCache.track_answer"]["samples"][0] == 42.0
    assert results["lists.UsesCache.track_file"]["samples"][0] == 41.0
    assert results["lists.AlsoUsesCache.track_again"]["samples"][0] == 41.0
    skipped = results["lists.Lists.track_len(n=10, pair=(1, 2))"]
    assert (skipped["status"], skipped["error"]) == ("skipped", "skipped by skip_params")
    assert results["lists.Lists.track_len(n=100, pair=(3, 4))"]["samples"][0] == 103.0
    from pympler.asizeof import asizeof  # asv's measure of a mem_ benchmark, for comparison

    data = list(range(100))
    assert results["lists.Lists.mem_list(n=100, pair=(1, 2))"]["samples"][0] == asizeof([data, list(data)]) - asizeof([data, data])
    fresh = results["nested.deep.timeraw_fresh"]
    assert fresh["status"] == "ok" and fresh["unit"] == "seconds" and len(fresh["samples"]) == 3
    assert all(results[f"lists.time_objects(param1=<benchmarks.common.Thing object> ({i}))"]["status"] == "ok"
               for i in (0, 1))


def test_a_file_that_fails_to_import_is_named_and_the_rest_runs(asv_project):
    write_suite(asv_project / "benchmarks", "broken.py", "from .common import no_such_name\n")
    listing = run_perfwatch("list", cwd=asv_project)
    assert listing.returncode == 3 and "nested.deep.time_deep" in listing.stdout, listing.stderr
    warning, summary = listing.stderr.splitlines()
    assert warning.startswith("warning: benchmarks/broken.py:1: importing the suite failed: ImportError: cannot "
                              "import name 'no_such_name'")
    assert summary == "perfwatch: 1 suite file failed to import and was skipped; see the warnings above"
    as_json = run_perfwatch("list", "--json", cwd=asv_project)
    assert as_json.returncode == 3 and as_json.stderr.endswith("; see import_errors\n")
    [error] = json.loads(as_json.stdout)["import_errors"]
    assert error.startswith("benchmarks/broken.py:1: importing the suite failed")

    proc = run_perfwatch("run", "--filter", "deep", "--store", "results", cwd=asv_project)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "broken.py" in ln]
    assert len(lines) == 1 and lines[0].startswith("✗ broken: benchmarks/broken.py:1: importing"), proc.stderr
    assert "1 suite file failed to import and was skipped" in proc.stderr
    results = stored(asv_project)
    assert results["broken"]["status"] == "failed"
    assert results["nested.deep.time_deep"]["status"] == "ok" and results["nested.deep.timeraw_fresh"]["status"] == "ok"


def test_a_setup_cache_that_raises_or_hangs_fails_its_users_in_one_line(tmp_path):
    pid_file, log = tmp_path / "hanging.pid", tmp_path / "cache.log"
    write_suite(tmp_path / "suites", "cached.py", f'''
        import os, time

        class Raises:
            def setup_cache(self):
                open({str(log)!r}, "a").write("ran\\n")
                raise RuntimeError("no cache today")

            def track_a(self, cached):
                return 1.0

            def track_b(self, cached):
                return 2.0

        class Hangs:
            def setup_cache(self):
                open({str(pid_file)!r}, "w").write(str(os.getpid()))
                time.sleep(600)
            setup_cache.timeout = 1

            def track_c(self, cached):
                return 3.0
    ''')
    proc = run_perfwatch("run", "suites", "--store", "results", cwd=tmp_path)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    results = stored(tmp_path)
    for name in ("cached.Raises.track_a", "cached.Raises.track_b"):
        assert results[name]["error"] == "setup_cache: RuntimeError: no cache today (cached.py:7)"
    assert log.read_text() == "ran\n"  # a failed setup_cache is not run again for the next benchmark
    assert results["cached.Hangs.track_c"]["error"] == (
        "setup_cache: suites/cached.py:16: timed out after 1 s; set a larger `timeout` on setup_cache if it needs more")
    assert not psutil.pid_exists(int(pid_file.read_text()))


def test_a_setup_cache_may_take_longer_than_its_benchmarks_timeout(tmp_path):
    """asv gives setup_cache its own timeout: the benchmark's process is not killed while the cache is made."""
    write_suite(tmp_path / "suites", "slowcache.py", """
        import time

        class Slow:
            def setup_cache(self):
                time.sleep(2.5)
                return 42
            setup_cache.timeout = 20

            def track_answer(self, cached):
                return cached
            track_answer.timeout = 2
    """)
    proc = run_perfwatch("run", "suites", "--store", "results", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stored(tmp_path)["slowcache.Slow.track_answer"]["samples"][0] == 42


def test_dotted_names_and_relative_paths_keep_the_file_and_line(tmp_path):
    write_suite(tmp_path / "suites", "odd.py", '''
        def _raises(self):
            raise RuntimeError("no luck")

        class Odd:
            pass

        setattr(Odd, "time_a.b", _raises)  # a method whose name holds a dot
    ''')
    proc = run_perfwatch("run", "suites", "--store", "results", cwd=tmp_path)  # a relative suite path
    assert proc.returncode == 3, proc.stderr
    assert "odd.Odd.time_a.b: RuntimeError: no luck (odd.py:3)" in proc.stderr


def test_a_parameter_whose_name_would_hold_an_address_is_refused(tmp_path):
    write_suite(tmp_path / "suites", "handles.py", '''
        class Handle:
            def __repr__(self):
                return f"Handle(id={id(self):#x})"

        def time_handle(handle):
            pass
        time_handle.params = [Handle()]
    ''')
    proc = run_perfwatch("list", "suites", cwd=tmp_path)
    assert_one_line_error(proc, "benchmark handles.time_handle: parameter param1 = Handle(id=0x",
                          "holds the value's memory address", "give Handle a __repr__ without it")


def test_setups_run_module_first_and_the_timer_and_min_run_count_are_asvs(tmp_path):
    write_suite(tmp_path / "suites", "attrs.py", '''
        import time

        ORDER = []
        warmup_time = 0

        def setup():
            ORDER.append("module")

        class Order:
            def setup(self):
                ORDER.append("class")

            def track_order(self):
                return float(ORDER == ["module", "class"])

        def time_sleep_on_the_cpu_clock():
            time.sleep(0.01)
        time_sleep_on_the_cpu_clock.timer = time.process_time  # asv's `timer`: sleeping costs no CPU
        time_sleep_on_the_cpu_clock.number = 1
        time_sleep_on_the_cpu_clock.repeat = 3

        def time_at_least_four_calls():
            pass
        time_at_least_four_calls.number = 1
        time_at_least_four_calls.repeat = (1, 10, 0.0)  # one sample would do once max_time (0 s) passed...
        time_at_least_four_calls.min_run_count = 4      # ...but asv times at least four calls
    ''')
    proc = run_perfwatch("run", "suites", "--store", "results", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = stored(tmp_path)
    assert results["attrs.Order.track_order"]["samples"][0] == 1.0
    assert max(results["attrs.time_sleep_on_the_cpu_clock"]["samples"]) < 0.005
    assert len(results["attrs.time_at_least_four_calls"]["samples"]) == 4


@pytest.mark.parametrize("config, shown", [
    ('{\n  "benchmark_dir": \n}\n', "asv.conf.json:3:1: not valid JSON5"),
    ('{"benchmark_dir": "missing"}', "asv.conf.json: benchmark_dir missing does not exist"),
])
def test_a_bad_asv_config_is_one_line_naming_it(tmp_path, config, shown):
    (tmp_path / "asv.conf.json").write_text(config)
    assert_one_line_error(run_perfwatch("list", cwd=tmp_path), shown)


def test_a_config_is_read_as_asv_reads_it_json5_included(tmp_path):
    (tmp_path / "asv.conf.json").write_text("{\n  // JSON5, as asv reads it\n  benchmark_dir: 'suite',\n}\n")
    write_suite(tmp_path / "suite", "one.py", "def track_one():\n    return 1.0\n")
    assert [b["name"] for b in listed(tmp_path)["benchmarks"]] == ["one.track_one"]


def test_comments_and_trailing_commas_go_but_strings_stay():
    text = '{"url": "https://x.invalid/a,]", /* c */ "list": [1, 2,], // end\n "b": "/*not*/",}'
    assert json.loads(asvconf.without_comments(text)) == {"url": "https://x.invalid/a,]", "list": [1, 2],
                                                          "b": "/*not*/"}


def test_the_setup_cache_lives_in_the_runs_temporary_directory():
    assert setupcache.RUN_DIR_ENV == runner.RUN_DIR_ENV


def test_a_shared_setup_cache_gets_asvs_timeout(tmp_path):
    write_suite(tmp_path / "suites", "shared.py", '''
        class Base:
            def setup_cache(self):
                return 1

        class Short(Base):
            timeout = 5

            def track_a(self, cached):
                return cached

        class Long(Base):
            timeout = 30

            def track_b(self, cached):
                return cached

        class Own:
            def setup_cache(self):
                return 2
            setup_cache.timeout = 7

            def track_c(self, cached):
                return cached
    ''')
    proc = run_perfwatch("list", "suites", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = {b["name"]: b for b in json.loads(proc.stdout)["benchmarks"]}
    # One cache for Short and Long (asv's key: the module and line of Base.setup_cache), made under the
    # longest timeout of the benchmarks that share it, as asv makes it; a setup_cache's own timeout wins.
    assert found["shared.Short.track_a"]["setup_cache_key"] == found["shared.Long.track_b"]["setup_cache_key"]
    assert {name: b["setup_cache_timeout"] for name, b in found.items()} == {
        "shared.Short.track_a": 30, "shared.Long.track_b": 30, "shared.Own.track_c": 7}


FRESH = '''
    warmup_time = 0.05
    TORN_DOWN = []

    class Pop:
        def setup(self):
            self.items = [1]  # a call on state an earlier call used raises IndexError

        def teardown(self):
            TORN_DOWN.append(1)

        def time_pop(self):
            self.items.pop()

        def time_pop_three_per_sample(self):
            self.items.pop()
        time_pop_three_per_sample.number = 3

        def track_teardowns_ran(self):
            return float(len(TORN_DOWN))

    class Read:
        def setup(self):
            self.items = [1]

        def time_read(self):
            self.items[0]

    class Steady:
        fresh_setup = False  # perfwatch's opt-out: setup once, calls calibrated

        def setup(self):
            self.items = [1]

        def time_read(self):
            self.items[0]

    def time_without_setup():
        pass
'''


def test_each_timed_call_of_a_benchmark_with_setup_sees_fresh_state_as_in_asv(tmp_path):
    """In an asv project, as asv_runner does from 0.3 on (asv#966): with setup hooks, a time_ benchmark's calls
    each follow a fresh teardown + setup, so one that uses its state up times each call on the state setup
    made; ``number`` 1 unless the benchmark sets it. Without setup hooks, ``number`` is calibrated."""
    (tmp_path / "asv.conf.json").write_text('{"version": 1, "benchmark_dir": "suites"}')
    write_suite(tmp_path / "suites", "fresh.py", FRESH)
    proc = run_perfwatch("run", "--store", "results", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = stored(tmp_path)
    assert {name: r["status"] for name, r in results.items()} == dict.fromkeys(results, "ok")
    assert results["fresh.Pop.time_pop"]["number"] == results["fresh.Read.time_read"]["number"] == 1
    assert len(results["fresh.Pop.time_pop"]["samples"]) >= 5
    assert results["fresh.Pop.time_pop_three_per_sample"]["number"] == 3
    assert results["fresh.Pop.track_teardowns_ran"]["samples"][0] == 0.0  # track_: setup once, as asv
    assert results["fresh.time_without_setup"]["number"] > 1000
    assert results["fresh.Steady.time_read"]["number"] > 1000


def test_outside_an_asv_project_setup_runs_once_and_number_is_calibrated_for_the_steady_state(tmp_path):
    """perfwatch's own suites (no asv.conf.json) time the steady state: setup once per process, then as many
    calls per sample as fill it, so a benchmark that uses its state up fails there (README)."""
    write_suite(tmp_path / "suites", "fresh.py", FRESH)
    proc = run_perfwatch("run", "suites", "--store", "results", cwd=tmp_path)
    results = stored(tmp_path)
    assert results["fresh.Read.time_read"]["status"] == "ok" and results["fresh.Read.time_read"]["number"] > 1000
    assert results["fresh.Pop.time_pop"]["status"] == "failed" and "IndexError" in results["fresh.Pop.time_pop"]["error"]
    assert proc.returncode == 3
    write_suite(tmp_path / "suites", "fresh.py", FRESH.replace("fresh_setup = False", "fresh_setup = True"))
    run_perfwatch("run", "suites", "--store", "opted", cwd=tmp_path)
    [path] = (tmp_path / "opted").glob("*.json")
    opted = {b["name"]: b for b in json.loads(path.read_text())["benchmarks"]}
    assert opted["fresh.Steady.time_read"]["number"] == 1 and opted["fresh.Read.time_read"]["number"] > 1000
    write_suite(tmp_path / "suites", "fresh.py", FRESH.replace("fresh_setup = False", "fresh_setup = 'yes'"))
    assert_one_line_error(run_perfwatch("list", "suites", cwd=tmp_path),
                          "fresh.py: benchmark fresh.Steady.time_read: fresh_setup = 'yes' is not valid; it must be True or False")



TINY = """
class Abs:
    def setup(self):
        self.x = -1.5

    def time_abs(self):
        abs(self.x)
"""


def test_a_sub_microsecond_call_on_fresh_state_takes_the_time_asv_runner_gives_it(tmp_path):
    """With ``number`` 1 asv_runner times each call by ``timeit``, whose loop is in its numbers; perfwatch
    times it the same way and calls it as asv does, so a ~100 ns benchmark's median agrees with asv's. Both
    in this process, interleaved, so both see the same machine."""
    from asv_runner.benchmarks.time import TimeBenchmark

    from perfwatch.bench.suite import discover
    from perfwatch.bench.worker import Budget, fresh_state_sampler, load_benchmark

    (tmp_path / "asv.conf.json").write_text('{"version": 1, "benchmark_dir": "suites"}')
    suite = write_suite(tmp_path / "suites", "tiny.py", TINY)
    [bench] = discover([tmp_path / "suites"])
    ours = fresh_state_sampler(load_benchmark(bench), Budget(0.01, 0.01, 1, 1, 1.0), None)
    spec = importlib.util.spec_from_file_location("tiny_as_asv_imports_it", suite)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.Abs()
    instance.repeat, instance.warmup_time = (2000, 2000, 60.0), 0.01
    theirs = TimeBenchmark("tiny.Abs.time_abs", instance.time_abs, [instance.time_abs, instance])
    theirs.do_setup()
    our_medians, their_medians = [], []
    for _ in range(7):
        our_medians.append(statistics.median(ours.take() for _ in range(2000)))
        their_medians.append(statistics.median(theirs.run()["samples"]))
    assert theirs.run()["number"] == ours.number == 1
    ratio = statistics.median(our_medians) / statistics.median(their_medians)
    # Timed by a bare pair of clock reads it came out 0.85x; called through an extra closure, 1.46x. What
    # is left (up to ~8%) is what each tool's setup code leaves in the caches just before the call.
    assert 0.9 < ratio < 1.15, (our_medians, their_medians)
