"""The web UI over HTTP (httpx against the ASGI app): pages, escaping, access, CSRF, bad input.

Every refused write is checked to have changed nothing in the store.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from statestream import ConfigurationError, RunState
from statestream._core.records import Event, ParkedEvent
from statestream.web import create_app
from web_support import READ_TOKEN, TOKEN, Order, Status, make_workflow

BASE = "http://ui.test"
SCRIPT = "<script>alert('x')</script>"


def client(app: Any, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, **kw)


@pytest.fixture
async def wf() -> Any:
    return make_workflow()


async def seed(wf: Any, n: int = 3) -> list[str]:
    return [await wf.trigger(f"order-{i}", initial=Order(f"o{i}", i * 10)) for i in range(n)]


def csrf_of(text: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', text)
    assert match, "no CSRF field in the page"
    return match.group(1)


async def signed_in(c: httpx.AsyncClient, token: str = TOKEN) -> str:
    """Sign in through the login form; returns the CSRF token of the session's cookie."""
    page = await c.get("/login")
    csrf = csrf_of(page.text)
    r = await c.post("/login", data={"csrf": csrf, "token": token, "next": "/"})
    assert r.status_code == 303, r.text
    return csrf


# ------------------------------------------------------------------ reads


async def test_pages_render_and_escape_html_in_ids_objects_and_reasons(wf: Any) -> None:
    # Given a run whose foreign ID, object and pause reason are HTML
    run_id = await wf.trigger(SCRIPT, initial=Order("x", 1, note="<img src=x onerror=alert(1)>"))
    await wf.pause(run_id, "<b>bold</b><script>evil()</script>")
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        for url in ("/", f"/runs/{run_id}", f"/runs/{run_id}/confirm/cancel", "/graph"):
            r = await c.get(url)
            # Then every page shows them as text: no markup from the data reaches the page
            assert r.status_code == 200, url
            for raw in ("<script>alert", "<img src=x", "evil()</script>", "<b>bold"):
                assert raw not in r.text, url
            assert re.findall(r"<script[^>]*>", r.text) == [
                tag for tag in re.findall(r"<script[^>]*>", r.text) if 'src="/static/' in tag
            ], url
        page = (await c.get(f"/runs/{run_id}")).text
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
        assert "&lt;b&gt;bold&lt;/b&gt;" in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page


async def test_security_headers_on_pages_errors_and_static(wf: Any) -> None:
    await seed(wf, 1)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        for url in ("/", "/runs/nope", "/static/app.js", "/no/such/page", "/api/runs"):
            r = await c.get(url)
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp, url
            assert "frame-ancestors 'none'" in csp, url
            assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
            assert r.headers["x-frame-options"] == "DENY"
        assert (await c.get("/")).headers["cache-control"] == "no-store"


async def test_run_page_shows_object_history_timeouts_and_parked_errors(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)
    await wf.pause(run_id, "looking into it")
    await wf.resume(run_id)
    expire = datetime.now(UTC) + timedelta(days=3)
    await wf.timeout_store.create(wf.name, "order-0", run_id, int(Status.CREATED), 1, expire)
    event = Event(7, "orders-run-state-change", run_id, 2, {}, datetime.now(UTC))
    await wf.store.park(
        ParkedEvent("hook:orders:7", wf.name, "hook", event, "ValueError: <boom>", 10, expire)
    )
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        page = (await c.get(f"/runs/{run_id}")).text
    assert "&quot;amount&quot;: 0" in page  # the object, pretty JSON
    assert page.count("<tr><td>") >= 3  # three versions in the history (snapshots)
    assert "looking into it" in page
    assert expire.strftime("%Y-%m-%d %H:%M") in page  # the pending timeout
    assert "ValueError: &lt;boom&gt;" in page  # the parked event as the run's error


async def test_run_page_shows_the_retained_events_where_the_store_keeps_no_history() -> None:
    # Given a store that keeps no history, and a streamer that still holds the run's events
    # (one with HTML in a header), another run's, and an event of the run on a foreign topic
    from statestream import Message, RunState
    from statestream.adapters.memory import MemoryRecordStore

    wf = make_workflow(MemoryRecordStore())
    first, second = await seed(wf, 2)
    at = datetime.now(UTC)

    def event(run_id: str, status: Status, version: int, state: RunState) -> Message:
        headers = {"record_version": str(version), "run_state": str(int(state))}
        return Message(run_id, int(status), headers, at + timedelta(seconds=version))

    await wf.streamer.publish(
        "orders-1",
        [
            event(first, Status.CREATED, 1, RunState.INITIATED),
            event(second, Status.CREATED, 1, RunState.INITIATED),
        ],
    )
    await wf.streamer.publish("orders-2", [event(first, Status.PAID, 2, RunState.RUNNING)])
    await wf.streamer.publish(
        "orders-run-state-change",
        [
            Message(
                first, 2, {"record_version": "3", "run_state": SCRIPT}, at + timedelta(seconds=3)
            )
        ],
    )
    await wf.streamer.publish("elsewhere", [event(first, Status.SHIPPED, 9, RunState.RUNNING)])
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        page = (await c.get(f"/runs/{first}")).text
    table = page.split('<table id="events">')[1].split("</table>")[0]
    rows = table.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(rows) == 3, table
    assert "<td>1</td><td>CREATED</td><td>Initiated</td><td>orders-1</td>" in rows[0]
    assert "<td>2</td><td>PAID</td><td>Running</td><td>orders-2</td>" in rows[1]
    assert "&lt;script&gt;" in rows[2]
    assert "<script>" not in table
    assert "still retains" in page


async def test_keyset_paging_newest_first_covers_every_run_once(wf: Any) -> None:
    ids = await seed(wf, 7)
    seen: list[str] = []
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        cursor = ""
        for _ in range(5):
            r = await c.get(
                "/api/runs", params={"limit": "3", **({"after": cursor} if cursor else {})}
            )
            data = r.json()
            seen += [run["run_id"] for run in data["runs"]]
            cursor = data["older"]
            if not cursor:
                break
        # and the HTML pager goes back to newer pages with before=
        page = (await c.get("/", params={"limit": "3", "after": ids[4]})).text
        assert "before=" + ids[3] in page
        newer = (await c.get("/", params={"limit": "3", "before": ids[3]})).text
        assert all(i in newer for i in ids[4:])
        assert ids[3] not in newer.split("<tbody>")[1]
    assert seen == list(reversed(ids))


async def test_filters_by_status_state_foreign_id_and_time(wf: Any) -> None:
    ids = await seed(wf, 4)
    await wf.pause(ids[1], "")
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:

        async def found(**params: str) -> list[str]:
            r = await c.get("/api/runs", params=params)
            assert r.status_code == 200, r.text
            return [run["run_id"] for run in r.json()["runs"]]

        assert await found(state="paused") == [ids[1]]
        assert await found(state="Paused", status="created") == [ids[1]]
        assert await found(status="PAID") == []
        assert await found(foreign_id="order-2") == [ids[2]]
        assert await found(to="2000-01-01") == []
        assert len(await found(**{"from": "2000-01-01T00:00", "to": "2999-01-01"})) == 4


def _store(kind: str) -> Any:
    """A memory store with ``list_scan`` (ScanLister), or one without it (optional)."""
    from statestream.adapters.memory import MemoryRecordStore

    inner = MemoryRecordStore()
    if kind == "scan":
        return inner

    class Plain:
        def __getattr__(self, name: str) -> Any:
            if name == "list_scan":
                raise AttributeError(name)
            return getattr(inner, name)

    return Plain()


@pytest.mark.parametrize("kind", ["scan", "plain"])
async def test_a_status_filter_examines_a_bounded_number_of_runs_per_page(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 12 runs, all CREATED, and pages of a status filter that examine at most 5 runs
    from statestream import ScanLister
    from statestream.web import _data

    monkeypatch.setattr(_data, "SCAN_ROWS", 5)
    monkeypatch.setattr(_data, "_SCAN_CHUNK", 2)
    wf = make_workflow(_store(kind))
    assert isinstance(wf.store, ScanLister) is (kind == "scan")
    ids = await seed(wf, 12)
    newest = list(reversed(ids))
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        # When no run has the status: each page is partial, its cursor the last run examined
        pages = []
        cursor = ""
        for _ in range(5):
            params = {"status": "PAID", **({"after": cursor} if cursor else {})}
            data = (await c.get("/api/runs", params=params)).json()
            pages.append((data["runs"], data["partial"], data["older"]))
            cursor = data["older"]
            if not cursor:
                break
        assert pages == [([], True, newest[4]), ([], True, newest[9]), ([], False, "")]
        # and the page says so, with the link to look further
        html = (await c.get("/", params={"status": "PAID"})).text
        assert "Partial page: No matches in the 5 most recent runs examined" in html
        assert "No runs match." not in html
        assert f"after={newest[4]}" in html
        assert "Older →" in html
        deeper = (await c.get("/", params={"status": "PAID", "after": newest[4]})).text
        assert "No matches in the 5 next older runs examined" in deeper
        end = (await c.get("/", params={"status": "PAID", "after": newest[9]})).text
        assert "Partial page" not in end
        assert "No runs match." in end
        # Going back to newer runs from the end is bounded the same way
        back = (await c.get("/", params={"status": "PAID", "before": newest[9]})).text
        assert "No matches in the 5 next newer runs examined" in back
        assert f"before={newest[4]}" in back
        assert "← Newer" in back

        # When the runs have the status: full pages, every run once, newest first
        seen: list[str] = []
        cursor = ""
        for _ in range(10):
            params = {"status": "CREATED", "limit": "3", **({"after": cursor} if cursor else {})}
            data = (await c.get("/api/runs", params=params)).json()
            assert data["partial"] is False
            seen += [run["run_id"] for run in data["runs"]]
            cursor = data["older"]
            if not cursor:
                break
        assert seen == newest
        params = {"status": "CREATED", "limit": "3", "before": newest[6]}
        newer = (await c.get("/", params=params)).text
        table = newer.split("<tbody>")[1].split("</tbody>")[0]
        assert [i for i in newest if i in table] == newest[3:6]
        assert f"before={newest[3]}" in newer
        assert "Partial page" not in newer


async def test_graph_page_carries_the_mermaid_source_with_counts(wf: Any) -> None:
    await seed(wf, 3)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        page = (await c.get("/graph")).text
        data = (await c.get("/api/graph")).json()
    assert 'class="mermaid"' in page
    assert "/static/mermaid.min.js" in page
    assert "stateDiagram-v2" in data["mermaid"]
    assert "s1: Created (3)" in data["mermaid"]
    assert "s2: Paid (0)" in data["mermaid"]
    assert data["counts"]["1"] == 3


async def test_graph_counts_come_from_the_store_count_when_it_has_one() -> None:
    # Given a store that counts (RunCounter) far beyond what paging would count, and whose list
    # must not be paged through for the counts
    from statestream import RunCounts
    from statestream.adapters.memory import MemoryRecordStore

    class Counting(MemoryRecordStore):
        listed = 0

        async def count_runs(self, workflow_name: str) -> RunCounts:
            return RunCounts({1: 123_456, 3: 7}, {RunState.RUNNING: 123_463})

        async def list(self, *args: Any, **kw: Any) -> Any:
            self.listed += 1
            return await super().list(*args, **kw)

    store = Counting()
    wf = make_workflow(store)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        page = (await c.get("/graph")).text
        data = (await c.get("/api/graph")).json()
    assert "s1: Created (123,456)" in data["mermaid"]
    assert "s3: Shipped (7)" in data["mermaid"]
    assert "s2: Paid (0)" in data["mermaid"]
    assert data["counts"] == {"1": 123_456, "2": 0, "3": 7, "4": 0}
    assert data["exact"] is True
    assert "123,456" in page
    assert "10,000+" not in page
    assert store.listed == 0


async def test_graph_counts_page_through_a_store_that_cannot_count() -> None:
    # Given a record store without count_runs (the capability is optional)
    from statestream.adapters.memory import MemoryRecordStore

    inner = MemoryRecordStore()

    class Plain:
        def __getattr__(self, name: str) -> Any:
            if name == "count_runs":
                raise AttributeError(name)
            return getattr(inner, name)

    wf = make_workflow(Plain())
    await seed(wf, 3)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        data = (await c.get("/api/graph")).json()
    assert data["counts"]["1"] == 3
    assert data["exact"] is False


async def test_run_page_looks_its_timeouts_up_by_run(wf: Any) -> None:
    # Given two runs with a timer each, and a timeout store whose whole-workflow list fails
    first, second = await seed(wf, 2)
    expire = datetime.now(UTC) + timedelta(days=3)
    later = expire + timedelta(days=1)
    await wf.timeout_store.create(wf.name, "order-0", first, int(Status.CREATED), 1, expire)
    await wf.timeout_store.create(wf.name, "order-1", second, int(Status.CREATED), 1, later)

    async def no_scan(workflow_name: str) -> Any:
        raise AssertionError("the run page listed every timer of the workflow")

    wf.timeout_store.list = no_scan
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        page = (await c.get(f"/runs/{first}")).text
    assert expire.strftime("%Y-%m-%d %H:%M") in page
    assert later.strftime("%Y-%m-%d %H:%M") not in page


async def test_reads_need_a_token_unless_opened(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)
    app = create_app(wf, token=TOKEN, read_token=READ_TOKEN)
    async with client(app) as c:
        assert (await c.get("/")).status_code == 401
        assert (await c.get(f"/api/runs/{run_id}")).status_code == 401
        bad = {"Authorization": "Bearer not-the-token"}
        assert (await c.get("/api/runs", headers=bad)).status_code == 401
        for token in (READ_TOKEN, TOKEN):
            ok = {"Authorization": f"Bearer {token}"}
            assert (await c.get(f"/api/runs/{run_id}", headers=ok)).status_code == 200
    async with client(app) as c:
        await signed_in(c, READ_TOKEN)
        assert (await c.get("/")).status_code == 200


# ------------------------------------------------------------------ writes


async def test_pause_resume_cancel_and_delete_with_token_and_csrf(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        csrf = await signed_in(c)
        r = await c.post(f"/runs/{run_id}/pause", data={"csrf": csrf, "reason": "<i>why</i>"})
        assert r.status_code == 303
        assert r.headers["location"] == f"/runs/{run_id}?done=pause"
        run = await wf.get(run_id)
        assert run.run_state is RunState.PAUSED
        assert run.run_state_reason == "<i>why</i>"
        assert "The run is paused." in (await c.get(r.headers["location"])).text
        assert (await c.post(f"/runs/{run_id}/resume", data={"csrf": csrf})).status_code == 303
        assert (await wf.get(run_id)).run_state is RunState.RUNNING
        assert (await c.post(f"/runs/{run_id}/cancel", data={"csrf": csrf})).status_code == 303
        assert (await c.post(f"/runs/{run_id}/delete", data={"csrf": csrf})).status_code == 303
        assert (await wf.get(run_id)).run_state is RunState.REQUESTED_DATA_DELETED
        # a transition the table refuses is a 409 and writes nothing
        r = await c.post(f"/runs/{run_id}/pause", data={"csrf": csrf})
        assert r.status_code == 409
        assert (await wf.get(run_id)).run_state is RunState.REQUESTED_DATA_DELETED


async def test_refused_writes_change_nothing(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)
    before = await wf.store.lookup(run_id)
    app = create_app(wf, token=TOKEN, read_token=READ_TOKEN)
    async with client(app) as c:
        csrf = csrf_of((await c.get("/login")).text)
        url = f"/runs/{run_id}/pause"
        # no token at all
        assert (await c.post(url, data={"csrf": csrf})).status_code == 401
        # a forged bearer token and a forged session cookie
        forged = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
        assert (await c.post(url, data={"csrf": csrf}, headers=forged)).status_code == 401
        c.cookies.set("statestream_session", "w.9999999999.abc.deadbeef")
        assert (await c.post(url, data={"csrf": csrf})).status_code == 401
        # a wrong login
        r = await c.post("/login", data={"csrf": csrf, "token": "guess-guess-guess"})
        assert r.status_code == 401
        assert "statestream_session" not in r.headers.get("set-cookie", "")
    async with client(app) as c:
        # a reader may not write
        csrf = await signed_in(c, READ_TOKEN)
        assert (await c.post(url, data={"csrf": csrf})).status_code == 403
    async with client(app) as c:
        csrf = await signed_in(c)
        # signed in, but the CSRF token is missing, wrong, or the request comes from elsewhere
        assert (await c.post(url, data={})).status_code == 403
        assert (await c.post(url, data={"csrf": "x" * 43})).status_code == 403
        evil = {"Origin": "https://evil.example"}
        assert (await c.post(url, data={"csrf": csrf}, headers=evil)).status_code == 403
        cross = {"Sec-Fetch-Site": "cross-site"}
        assert (await c.post(url, data={"csrf": csrf}, headers=cross)).status_code == 403
        # a body too large, or not a form
        huge = {"csrf": csrf, "reason": "x" * 20_000}
        assert (await c.post(url, data=huge)).status_code == 413
        r = await c.post(url, json={"csrf": csrf})
        assert r.status_code == 415
        long_reason = {"csrf": csrf, "reason": "y" * 1001}
        assert (await c.post(url, data=long_reason)).status_code == 400
        # GET does not write
        assert (await c.get(url)).status_code in (404, 405)
    after = await wf.store.lookup(run_id)
    assert after == before


async def test_unknown_runs_and_parked_ids_are_404(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        csrf = await signed_in(c)
        assert (await c.get("/runs/01ffffffffffffffffffffffffffffff")).status_code == 404
        assert (await c.get("/api/runs/01ffffffffffffffffffffffffffffff")).status_code == 404
        assert (await c.get("/runs/" + "a" * 300)).status_code == 400
        r = await c.post("/runs/01ffffffffffffffffffffffffffffff/pause", data={"csrf": csrf})
        assert r.status_code == 404
        r = await c.post("/parked/retry", data={"csrf": csrf, "parked_id": "nope"})
        assert r.status_code == 404
        assert (await c.get(f"/runs/{run_id}/confirm/explode")).status_code == 404
        assert (await c.post(f"/runs/{run_id}/explode", data={"csrf": csrf})).status_code == 404
        assert (await c.get("/graph", params={"workflow": "other"})).status_code == 404
    assert (await wf.get(run_id)).run_state is RunState.INITIATED


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=ten",
        "status=NOPE",
        "state=sleeping",
        "from=yesterday",
        "from=2026-02-01&to=2026-01-01",
        "after=" + "z" * 300,
        "after=01ffffffffffffffffffffffffffffff",
        "after=a&before=b",
        "foreign_id=" + "f" * 300,
        "status=CREATED&status=PAID",
        "foreign_id=%ff%fe",
        "&".join(f"k{i}=v" for i in range(40)),
    ],
)
async def test_malformed_query_parameters_are_400(wf: Any, query: str) -> None:
    await seed(wf, 1)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        for path in ("/", "/api/runs"):
            r = await c.get(f"{path}?{query}")
            assert r.status_code == 400, (path, query, r.text[:200])


async def test_huge_query_string_is_414(wf: Any) -> None:
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        r = await c.get("/?foreign_id=" + "x" * 5000)
    assert r.status_code == 414
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_parked_page_lists_and_retries(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)
    event = Event(3, "orders-run-state-change", run_id, 2, {}, datetime.now(UTC))
    parked = ParkedEvent("hook:x:3", wf.name, "hook", event, "<b>fail</b>", 10, datetime.now(UTC))
    await wf.store.park(parked)
    async with client(create_app(wf, token=TOKEN, open_reads=True)) as c:
        page = (await c.get("/parked")).text
        assert "hook:x:3" in page
        assert "&lt;b&gt;fail&lt;/b&gt;" in page
        form = {"parked_id": "hook:x:3", "workflow": wf.name}
        assert (
            await c.post("/parked/retry", data={**form, "csrf": csrf_of(page)})
        ).status_code == 403  # open reads, no write token
        csrf = await signed_in(c)
        r = await c.post("/parked/retry", data={**form, "csrf": csrf})
        assert r.status_code == 303
        assert "retry requested" in (await c.get(r.headers["location"])).text
    (listed,) = await wf.parked()
    assert listed.retry_requested


# ------------------------------------------------------------------ configuration


async def test_callable_tokens_decide_per_request(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)

    async def is_admin(request: Any) -> bool:
        return request.headers.get("x-user") == "admin"

    app = create_app(wf, token=is_admin, read_token=lambda request: True)
    async with client(app) as c:
        csrf = csrf_of((await c.get(f"/runs/{run_id}/confirm/pause")).text)
        url = f"/runs/{run_id}/pause"
        assert (await c.post(url, data={"csrf": csrf})).status_code == 403
        assert (await wf.get(run_id)).run_state is RunState.INITIATED
        r = await c.post(url, data={"csrf": csrf}, headers={"x-user": "admin"})
        assert r.status_code == 303
    assert (await wf.get(run_id)).run_state is RunState.PAUSED


def test_configuration_errors(wf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATESTREAM_WEB_TOKEN", raising=False)
    monkeypatch.delenv("STATESTREAM_WEB_READ_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="STATESTREAM_WEB_TOKEN"):
        create_app(wf)
    with pytest.raises(ConfigurationError, match="at least 8"):
        create_app(wf, token="short")
    with pytest.raises(ConfigurationError, match="at least one"):
        create_app([], token=TOKEN)
    with pytest.raises(ConfigurationError, match="two workflows"):
        create_app([wf, make_workflow()], token=TOKEN)
    monkeypatch.setenv("STATESTREAM_WEB_TOKEN", TOKEN)
    assert create_app(wf) is not None


async def test_writes_disabled_without_a_write_token(
    wf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATESTREAM_WEB_TOKEN", raising=False)
    (run_id,) = await seed(wf, 1)
    async with client(create_app(wf, open_reads=True)) as c:
        csrf = csrf_of((await c.get(f"/runs/{run_id}/confirm/pause")).text)
        r = await c.post(f"/runs/{run_id}/pause", data={"csrf": csrf})
        assert r.status_code == 403
        assert "writes are disabled" in r.text
    assert (await wf.get(run_id)).run_state is RunState.INITIATED


async def test_mounted_inside_another_app(wf: Any) -> None:
    (run_id,) = await seed(wf, 1)
    other = make_workflow(name="invoices")
    outer = Starlette(routes=[Mount("/ops", create_app([wf, other], token=TOKEN, open_reads=True))])
    async with client(outer) as c:
        first = await c.get("/ops/")
        assert "Path=/ops" in first.headers["set-cookie"]
        page = first.text
        assert f'href="/ops/runs/{run_id}"' in page
        assert 'src="/ops/static/app.js"' in page
        assert "<option selected>orders</option><option>invoices</option>" in page
        assert "No runs match." in (await c.get("/ops/?workflow=invoices")).text
        login = await c.get("/ops/login")
        r = await c.post(
            "/ops/login", data={"csrf": csrf_of(login.text), "token": TOKEN, "next": "//evil"}
        )
        assert r.headers["location"] == "/ops/"
        r = await c.post(f"/ops/runs/{run_id}/pause", data={"csrf": csrf_of(login.text)})
        assert r.headers["location"] == f"/ops/runs/{run_id}?done=pause"
        assert (await c.get("/ops/static/mermaid.min.js")).status_code == 200
    assert (await wf.get(run_id)).run_state is RunState.PAUSED


def test_mermaid_is_pinned_and_its_licence_ships() -> None:
    static = Path(__file__).parent.parent / "src" / "statestream" / "web" / "static"
    digest = hashlib.sha256((static / "mermaid.min.js").read_bytes()).hexdigest()
    assert digest == "336df803d87a38b70a01e736e666c8f7601d2ce42f5e47c8fafe5d721074b9a3"
    assert "MIT License" in (static / "mermaid.LICENSE").read_text()
    assert "12.3.0" in (static / "README.txt").read_text()


def test_cli_web_refuses_to_serve_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from statestream.cli import main

    monkeypatch.delenv("STATESTREAM_WEB_TOKEN", raising=False)
    monkeypatch.delenv("STATESTREAM_WEB_READ_TOKEN", raising=False)
    assert main(["web", "web_support:make_workflow"]) == 2
    assert "STATESTREAM_WEB_TOKEN" in capsys.readouterr().err
    assert main(["web", "web_support:make_workflow", "--port", "70000"]) == 2
    assert main(["web", "--help"]) == 0
    assert "--open-reads" in capsys.readouterr().out
