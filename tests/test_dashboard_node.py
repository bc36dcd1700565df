"""The node view's API over HTTP against a real node on a private Redis: what it shows, its
filters and their errors, why a task waits, dead letters and their requeue, the roles, the
live stream, and that it is right after a restart (it keeps no copy of its own)."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from node.errors import StoreUnavailableError
from node.model import Priority, TaskSpec, TaskStatus, WorkerSpec
from node.runtime.node import LocalNode
from tests.conftest import RedisServer, wait_until
from tests.dashboard_node import OPERATOR, VIEWER, DashboardNode, http
from tests.test_runtime import fast_config


@pytest.fixture
def dn(redis_url: str) -> Iterator[DashboardNode]:
    with DashboardNode(redis_url, config=fast_config(backoff_base_s=30.0)) as d:
        yield d


def _fail_for_good(d: DashboardNode, n: int, worker: str = "wf", error: str = "ValueError: boom") -> list[str]:
    """``n`` tasks of type ``doomed`` submitted, claimed by ``worker`` and failed without retry."""

    cap = f"doom-{worker}"  # only this worker takes them (not one requeued from an earlier call)

    async def go(node: LocalNode) -> list[str]:
        ids = await node.submit(
            [
                TaskSpec("doomed", b"%d" % k, max_retries=0, priority=Priority.CRITICAL, required_capabilities=(cap,))
                for k in range(n)
            ]
        )
        await node.register_worker(WorkerSpec(worker, capabilities=(cap,), concurrency=n))
        leases = await node.claim(worker, n)
        assert {lease.task_id for lease in leases} == set(ids)
        for lease in leases:
            await node.fail(lease, error, retry=False)
        await node.deregister_worker(worker)
        return ids

    return d.call(go)


def test_overview_shows_queues_lines_types_workers_and_counters(dn: DashboardNode) -> None:
    async def go(node: LocalNode) -> None:
        await node.submit([TaskSpec("resize", priority=Priority.HIGH) for _ in range(3)])
        await node.submit([TaskSpec("encode", priority=Priority.LOW, required_capabilities=("gpu",))])
        await node.register_worker(WorkerSpec("w1", concurrency=2))
        assert len(await node.claim("w1", 2)) == 2

    dn.call(go)
    status, o = http(dn.url + "api/overview")
    assert status == 200
    assert o["node_id"] == "n1" and o["state"] == "serving"
    assert o["load"]["leased"] == 2 and o["load"]["ready"] == 2 and o["load"]["slots"] == 2
    assert o["load"]["ratio"] == 2.0
    depth = {q["priority"]: q["depth"] for q in o["queues"]}
    assert depth == {"critical": 0, "high": 1, "medium": 0, "low": 1}
    assert all(q["oldest_age_s"] is not None for q in o["queues"] if q["depth"])
    lines = {(tuple(q["capabilities"]), q["priority"]): q for q in o["lines"]}
    assert lines[((), "high")]["depth"] == 1 and lines[((), "high")]["takers"] == 1
    assert lines[(("gpu",), "low")]["takers"] == 0  # nobody can take it
    assert o["types"] == {"resize": 3, "encode": 1}
    assert o["active"]["assigned"] == 2 and o["active"]["queued"] == 2
    assert o["totals"]["submitted"] == 4
    (w,) = o["workers"]
    assert w["id"] == "w1" and w["active"] == 2 and w["load"] == 1.0 and w["health"] == "healthy"


def test_task_filters_several_statuses_type_priority_worker_and_pages(dn: DashboardNode) -> None:
    async def go(node: LocalNode) -> list[str]:
        ids = await node.submit([TaskSpec("a", priority=Priority.HIGH) for _ in range(5)])
        ids += await node.submit([TaskSpec("b", priority=Priority.LOW) for _ in range(4)])
        await node.register_worker(WorkerSpec("w1", concurrency=3))
        assert len(await node.claim("w1", 3)) == 3  # the three oldest HIGH ones
        return ids

    ids = dn.call(go)
    base = dn.url + "api/tasks"
    _, r = http(base + "?status=queued,assigned&limit=4")
    assert r["total"] == 9 and r["more"] is True and len(r["tasks"]) == 4
    assert [t["id"] for t in r["tasks"]] == ids[::-1][:4]  # newest first
    _, r2 = http(base + "?status=queued,assigned&limit=4&offset=8")
    assert [t["id"] for t in r2["tasks"]] == [ids[0]] and r2["more"] is False
    _, r = http(base + "?status=assigned")
    assert {t["id"] for t in r["tasks"]} == set(ids[:3]) and r["total"] == 3
    assert all(t["worker"] == "w1" and t["status"] == "assigned" for t in r["tasks"])
    _, r = http(base + "?worker=w1")
    assert {t["id"] for t in r["tasks"]} == set(ids[:3]) and r["total"] is None  # not from a counter
    _, r = http(base + "?type=b")
    assert {t["id"] for t in r["tasks"]} == set(ids[5:]) and r["total"] == 4
    _, r = http(base + "?priority=high&status=queued")
    assert {t["id"] for t in r["tasks"]} == set(ids[3:5])
    _, r = http(base + "?priority=low")
    assert r["total"] == 4


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=completed", "status"),  # finished tasks are not listed here (dead letters are)
        ("status=queued,nonsense", "status"),
        ("priority=urgent", "priority"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("offset=-1", "offset"),
        ("offset=ten", "offset"),
    ],
)
def test_bad_task_filters_are_refused_naming_the_parameter(dn: DashboardNode, query: str, parameter: str) -> None:
    status, body = http(dn.url + "api/tasks?" + query)
    assert status == 400
    assert body["parameter"] == parameter and parameter in body["error"]


def test_history_minutes_out_of_range_is_refused(dn: DashboardNode) -> None:
    for bad in ("0", "1441", "x"):
        status, body = http(dn.url + f"api/history?minutes={bad}")
        assert status == 400 and body["parameter"] == "minutes"


def test_a_task_story_says_why_it_waits(dn: DashboardNode) -> None:
    async def go(node: LocalNode) -> dict[str, str]:
        (parent,) = await node.submit([TaskSpec("parent")])
        (child,) = await node.submit([TaskSpec("child", dependencies=[parent])])
        (gpu,) = await node.submit([TaskSpec("render", required_capabilities=("gpu",))])
        await node.register_worker(WorkerSpec("cpu1", concurrency=1))
        (lease,) = await node.claim("cpu1", 1)
        assert lease.task_id == parent
        (flaky,) = await node.submit([TaskSpec("flaky", max_retries=3)])
        await node.register_worker(WorkerSpec("cpu2", concurrency=1))
        (lease2,) = await node.claim("cpu2", 1)
        assert lease2.task_id == flaky
        await node.fail(lease2, "TimeoutError: upstream", retry=True)  # backoff 30 s
        return {"parent": parent, "child": child, "gpu": gpu, "flaky": flaky}

    ids = dn.call(go)
    _, t = http(dn.url + "api/tasks/" + ids["child"])
    assert t["status"] == "pending" and t["dependencies"] == [ids["parent"]]
    assert "waits on 1 unfinished dependency" in t["why"][0] and ids["parent"] in t["why"][0]
    _, t = http(dn.url + "api/tasks/" + ids["gpu"])
    assert any("no healthy worker can take it" in w and "gpu" in w for w in t["why"])
    _, t = http(dn.url + "api/tasks/" + ids["parent"])
    assert t["why"][0] == "leased to worker cpu1 (attempt 1)"
    _, t = http(dn.url + "api/tasks/" + ids["flaky"])
    assert t["why"][0].startswith("waits out a retry backoff: ready in")
    assert "upstream" in t["why"][1]
    status, body = http(dn.url + "api/tasks/nope")
    assert status == 404 and "nope" in body["error"]


def test_dead_letters_requeue_needs_the_operator_token_and_outlives_a_restart(redis_url: str) -> None:
    with DashboardNode(redis_url, config=fast_config(), viewer_token=VIEWER) as d:
        ids = _fail_for_good(d, 3)
        assert http(d.url + "api/dead")[0] == 401  # a viewer token is set: reads need one
        status, r = http(d.url + "api/dead", token=VIEWER)
        assert status == 200 and r["total"] == 3
        assert {t["id"] for t in r["tasks"]} == set(ids)
        assert all(t["status"] == "failed" and "boom" in t["error"] for t in r["tasks"])
        url = d.url + f"api/dead/{ids[0]}/requeue"
        assert http(url, method="POST")[0] == 401
        assert http(url, method="POST", token=VIEWER)[0] == 403
        assert http(d.url + "api/tasks", token=OPERATOR)[0] == 200  # the operator reads too

    # The node restarts on the same Redis: the dashboard shows the same dead letters.
    with DashboardNode(redis_url, config=fast_config(), viewer_token=VIEWER) as d:
        _, r = http(d.url + "api/dead", token=VIEWER)
        assert r["total"] == 3 and {t["id"] for t in r["tasks"]} == set(ids)
        status, body = http(d.url + f"api/dead/{ids[0]}/requeue", method="POST", token=OPERATOR)
        assert (status, body) == (200, {"requeued": ids[0]})
        _, r = http(d.url + "api/dead", token=VIEWER)
        assert r["total"] == 2 and ids[0] not in {t["id"] for t in r["tasks"]}
        _, t = http(d.url + f"api/tasks/{ids[0]}", token=VIEWER)
        assert t["status"] == "queued"
        # requeued twice: the second is refused, with the reason
        status, body = http(d.url + f"api/dead/{ids[0]}/requeue", method="POST", token=OPERATOR)
        assert status == 409 and "requeue" in body["error"]


def test_removing_a_gone_worker_needs_the_operator_token(dn: DashboardNode) -> None:
    dn.call(lambda node: node.register_worker(WorkerSpec("old", concurrency=1)))
    url = dn.url + "api/workers/old/remove"
    assert http(url, method="POST")[0] == 401
    assert http(url, method="POST", token="wrong-token")[0] == 401
    assert http(url, method="POST", token=OPERATOR) == (200, {"removed": "old"})
    assert http(dn.url + "api/overview")[1]["workers"] == []
    assert http(url, method="POST", token=OPERATOR)[0] == 404


def test_an_action_from_another_site_is_refused_even_with_the_token(dn: DashboardNode) -> None:
    dn.call(lambda node: node.register_worker(WorkerSpec("w1", concurrency=1)))
    url = dn.url + "api/workers/w1/remove"
    own = dn.url.rstrip("/")
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": own}):  # fmt: skip
        status, body = http(url, method="POST", token=OPERATOR, headers=headers)
        assert status == 403 and "cross-site" in body["error"], (headers, body)
    assert len(http(dn.url + "api/overview")[1]["workers"]) == 1  # nothing was done
    # the page's own requests (same origin, as Chromium sends them) act
    same = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
    assert http(url, method="POST", token=OPERATOR, headers=same) == (200, {"removed": "w1"})


def test_the_stream_sends_a_change_without_being_asked(dn: DashboardNode) -> None:
    """Server-sent events: the first snapshot at once, then a new one after a submit."""
    req = urllib.request.Request(dn.url + "api/stream")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")

        def next_snapshot() -> dict[str, Any]:
            while True:
                line = r.readline()
                assert line, "the stream ended"
                if line.startswith(b"data: "):
                    return orjson.loads(line[6:])  # type: ignore[no-any-return]

        first = next_snapshot()
        assert first["totals"].get("submitted", 0) == 0
        dn.call(lambda node: node.submit([TaskSpec("late")]))
        t0 = time.monotonic()
        while (snap := next_snapshot())["totals"].get("submitted", 0) != 1:
            assert time.monotonic() - t0 < 10, "no snapshot with the submit"
        assert snap["active"]["queued"] == 1


def test_threshold_history_is_sampled_into_the_minute_rows(dn: DashboardNode) -> None:
    def sampled() -> bool:
        rows = http(dn.url + "api/history?minutes=5")[1]["rows"]
        return rows[-1]["threshold"] is not None and rows[-1]["load_ratio"] is not None

    wait_until(sampled, what="a sampled threshold in the current minute")
    rows = http(dn.url + "api/history?minutes=5")[1]["rows"]
    assert rows[-1]["threshold"] == pytest.approx(dn.sync(lambda node: node.threshold()), abs=0.2)


def test_pages_static_files_and_favicon_are_served(dn: DashboardNode) -> None:
    for path, kind in (
        ("", "text/html"),
        ("static/node.js", "javascript"),
        ("static/vendor/echarts-6.1.0/echarts.min.js", "javascript"),
        ("favicon.ico", "image/svg"),
    ):
        with urllib.request.urlopen(dn.url + path, timeout=10) as r:
            assert r.status == 200 and kind in r.headers["content-type"], path


def test_task_ids_and_statuses_are_the_cores(dn: DashboardNode) -> None:
    ids = dn.call(lambda node: node.submit([TaskSpec("x") for _ in range(2)]))
    _, r = http(dn.url + "api/tasks")
    assert {t["id"]: t["status"] for t in r["tasks"]} == dict.fromkeys(ids, TaskStatus.QUEUED.value)


def test_ids_with_a_slash_are_opened_requeued_and_removed(dn: DashboardNode) -> None:
    async def go(node: LocalNode) -> None:
        await node.submit([TaskSpec("doomed", id="job/2026/1", max_retries=0)])
        await node.register_worker(WorkerSpec("pool/a", concurrency=1))
        (lease,) = await node.claim("pool/a", 1)
        await node.fail(lease, "ValueError: boom", retry=False)

    dn.call(go)
    status, t = http(dn.url + "api/tasks/" + urllib.parse.quote("job/2026/1", safe=""))
    assert status == 200 and t["id"] == "job/2026/1" and t["status"] == "failed"
    assert http(dn.url + "api/tasks/job/2026/1")[1]["id"] == "job/2026/1"
    assert http(dn.url + "api/dead/job/2026/1/requeue", method="POST", token=OPERATOR) == (
        200,
        {"requeued": "job/2026/1"},
    )
    assert http(dn.url + "api/workers/pool/a/remove", method="POST", token=OPERATOR) == (200, {"removed": "pool/a"})


def test_a_token_in_the_address_never_acts(dn: DashboardNode) -> None:
    """A token in a URL ends up in logs: it reads at most (on the stream), whichever token it is."""
    dn.call(lambda node: node.register_worker(WorkerSpec("w1", concurrency=1)))
    status, _ = http(dn.url + f"api/workers/w1/remove?token={OPERATOR}", method="POST")
    assert status == 401
    assert len(http(dn.url + "api/overview")[1]["workers"]) == 1


def test_reads_by_token_in_the_address_only_on_the_stream(redis_url: str) -> None:
    with DashboardNode(redis_url, config=fast_config(), viewer_token=VIEWER) as d:
        assert http(d.url + f"api/overview?token={VIEWER}")[0] == 401
        with urllib.request.urlopen(d.url + f"api/stream?token={VIEWER}", timeout=10) as r:
            assert r.readline() == b"retry: 1000\n"
        with urllib.request.urlopen(d.url + f"api/stream?token={OPERATOR}", timeout=10) as r:  # viewer at most
            assert r.readline() == b"retry: 1000\n"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(d.url + "api/stream?token=wrong-token", timeout=10)
        assert e.value.code == 401
        e.value.close()


def test_a_node_that_lost_its_store_says_so(own_redis: RedisServer) -> None:
    """Redis gone: the overview answers with the node's state and why; the other reads 503."""
    with DashboardNode(own_redis.url, config=fast_config()) as d:
        d.call(lambda node: node.submit([TaskSpec("x")]))
        own_redis.kill()

        async def write(node: LocalNode) -> str:
            try:
                await node.submit([TaskSpec("y")])
            except StoreUnavailableError as e:  # the commit fails: the node degrades
                return str(e)
            return "written"

        assert d.call(write) != "written"

        def degraded() -> dict[str, Any] | None:
            o = http(d.url + "api/overview")[1]
            return o if o.get("state") == "degraded" else None

        o = wait_until(degraded, timeout_s=30, what="the node to notice its store is gone")
        assert "unavailable" in o["error"]
        status, body = http(d.url + "api/tasks")
        assert status == 503 and "unavailable" in body["error"]


def test_a_page_on_loopback_answers_to_loopback_names_only(redis_url: str) -> None:
    """A DNS-rebinding site cannot read it: another Host is refused."""
    from fedcoord.dashboard.web import LOOPBACK_HOSTS  # noqa: PLC0415

    with DashboardNode(redis_url, config=fast_config(), trusted_hosts=LOOPBACK_HOSTS) as d:
        assert http(d.url + "api/overview")[0] == 200
        req = urllib.request.Request(d.url + "api/overview", headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400
        e.value.close()
