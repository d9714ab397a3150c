"""conftest's background queue (tests/background_queue.py): jobs run one at a time in order, a
job's error reaches whoever waits for it, the waits are timed, a closed queue starts nothing
new; and the modules that wait on a job are ordered last, whole, in queue order."""

import threading
import time
from types import SimpleNamespace

import pytest
from background_queue import BackgroundQueue, consumers_last


def test_jobs_run_one_at_a_time_in_order_and_the_wait_is_timed():
    queue = BackgroundQueue()
    queue.submit("slow", lambda: time.sleep(0.3) or "built")
    queue.submit("next", lambda: "also built")
    assert queue.result("slow", "the_fixture") == "built"
    assert queue.result("next", "another_fixture") == "also built"
    queue.close()
    (slow_start, slow_end), (next_start, _) = queue.ran["slow"], queue.ran["next"]
    assert slow_end - slow_start >= 0.3 and next_start >= slow_end
    waiter, asked, waited = queue.waits["slow"]
    assert waiter == "the_fixture" and asked < 0.1 and 0.25 <= waited <= slow_end + 0.05
    slow_line, next_line = queue.summary()
    assert slow_line.startswith("slow: ran 0 s") and "; the_fixture waited 0 s for it (from +0 s)" in slow_line
    assert next_line.startswith("next: ran ") and "another_fixture waited" in next_line


def test_a_jobs_error_is_raised_to_its_waiter_and_reported():
    def broken():
        raise RuntimeError("dvc repro failed: the job's own message")

    queue = BackgroundQueue()
    queue.submit("broken", broken)
    with pytest.raises(RuntimeError, match="dvc repro failed: the job's own message"):
        queue.result("broken", "study")
    queue.close()
    assert queue.summary()[0].startswith("broken: failed ") and "study waited" in queue.summary()[0]


def test_closing_waits_for_the_running_job_and_starts_no_other():
    started, release = threading.Event(), threading.Event()
    queue = BackgroundQueue()
    queue.submit("running", lambda: started.set() or release.wait(5))
    queue.submit("queued", lambda: "never")
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    queue.close()
    assert queue.futures["running"].result() is True and "running" in queue.ran
    assert queue.futures["queued"].cancelled() and "queued" not in queue.ran
    assert queue.summary() == [queue.summary()[0], "queued: never started; nothing waited for it"]


def test_modules_that_wait_on_a_job_go_last_whole_and_in_queue_order():
    def item(module, name, *fixtures):
        return SimpleNamespace(nodeid=f"tests/{module}.py::{name}", fixturenames=["background", *fixtures])

    items = [item("a", "t1"), item("second", "t1", "tmp_path"), item("second", "t2", "bf16_study"),
             item("first", "t1", "dvc_study"), item("first", "t2", "bf16_study", "dvc_study"),
             item("first", "t3"), item("z", "t1", "tmp_path")]
    ordered = consumers_last(items, [{"dvc_study", "dvc_study_and_experiment"}, {"bf16_study"}])
    assert [i.nodeid for i in ordered] == ["tests/a.py::t1", "tests/z.py::t1", "tests/first.py::t1",
                                           "tests/first.py::t2", "tests/first.py::t3",
                                           "tests/second.py::t1", "tests/second.py::t2"]
    assert consumers_last(items[:2], [{"dvc_study"}]) == items[:2]
