"""PostgreSQL and MySQL: schema version 2's indexes on the runs serve every list the web UI
makes and ``count_runs`` (EXPLAIN of the statements the stores really send), and a database of
version 1 migrates to them with its runs kept."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from servers import require_mysql, require_postgres, unique_prefix
from statestream import errors
from statestream._core.records import Message, Order, OutboxEvent, Record, RecordFilter
from statestream._core.runstate import RunState
from statestream.adapters.sql import SCHEMA_VERSION, migrate, schema_version
from statestream.adapters.sql._schema import load_migrations

NOW = datetime.now(UTC).replace(microsecond=0)
STATES = [RunState.RUNNING, RunState.PAUSED, RunState.COMPLETED, RunState.CANCELLED]


def _record(wf: str, i: int) -> Record:
    at = NOW + timedelta(seconds=i)
    return Record(wf, f"fid-{i}", uuid.uuid4().hex, STATES[i % 4], i % 5 + 1, b"{}", at, at)


def _event(r: Record) -> OutboxEvent:
    return OutboxEvent(uuid.uuid4().hex, r.workflow_name, "t", Message(r.run_id, r.status, {}, NOW))


@dataclass
class Backend:
    name: str
    url: str
    prefix: str
    db: Any
    store: Any
    timeouts: Any
    #: (sql, args) of every statement db.fetch/fetchval ran
    sent: list[tuple[str, tuple[Any, ...]]]
    explain: Callable[..., Awaitable[str]]
    raw: Callable[[str], Awaitable[None]]


def _postgres(prefix: str) -> Any:
    pytest.importorskip("asyncpg")
    from statestream.adapters.postgres import (
        PostgresDatabase,
        PostgresRecordStore,
        PostgresTimeoutStore,
    )

    db = PostgresDatabase(require_postgres(), prefix=prefix)
    return db, PostgresRecordStore(db), PostgresTimeoutStore(db)


def _mysql(prefix: str) -> Any:
    pytest.importorskip("asyncmy")
    from statestream.adapters.mysql import MysqlDatabase, MysqlRecordStore, MysqlTimeoutStore

    db = MysqlDatabase(require_mysql(), prefix=prefix)
    return db, MysqlRecordStore(db), MysqlTimeoutStore(db)


async def _pg_tools(url: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url)
    # Tables this small would be scanned, or their matches sorted: forbid that (a sort then
    # only shows when nothing else can answer), so that the plan shows whether an index serves
    # the query, in its order, at all.
    await conn.execute("SET enable_seqscan = off")
    await conn.execute("SET enable_bitmapscan = off")

    async def explain(sql: str, args: tuple[Any, ...], ordered: bool = True) -> str:
        await conn.execute(f"SET enable_sort = {'off' if ordered else 'on'}")
        return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))

    async def raw(sql: str) -> None:
        await conn.execute(sql)

    return conn, explain, raw


async def _my_tools(url: str) -> Any:
    import asyncmy

    from statestream.adapters.mysql import MysqlDatabase

    u = MysqlDatabase(url).url
    conn = await asyncmy.connect(
        host=u.host,
        port=u.port,
        user=u.user,
        password=u.password,
        database=u.database,
        autocommit=True,
    )

    async def explain(sql: str, args: tuple[Any, ...], ordered: bool = True) -> str:
        cur = conn.cursor()
        await cur.execute("EXPLAIN " + sql, args)
        columns = [d[0] for d in cur.description]
        rows = [dict(zip(columns, row, strict=True)) for row in await cur.fetchall()]
        return "\n".join(f"key={r['key']} type={r['type']} extra={r['Extra']}" for r in rows)

    async def raw(sql: str) -> None:
        cur = conn.cursor()
        await cur.execute(sql)
        await cur.fetchall()

    return conn, explain, raw


@pytest.fixture(params=["postgres", "mysql"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    prefix = unique_prefix()
    name = request.param
    db, store, timeouts = _postgres(prefix) if name == "postgres" else _mysql(prefix)
    url = require_postgres() if name == "postgres" else require_mysql()
    conn, explain, raw = await (_pg_tools(url) if name == "postgres" else _my_tools(url))
    sent: list[tuple[str, tuple[Any, ...]]] = []
    for method in ("fetch", "fetchval"):
        original = getattr(db, method, None)
        if original is None:
            continue

        def spy(original: Any = original, method: str = method) -> Any:
            async def call(sql: str, *args: Any, **kw: Any) -> Any:
                values = tuple(args[0]) if name == "mysql" and args else args
                sent.append((sql, values))
                return await original(sql, *args, **kw)

            return call

        setattr(db, method, spy())
    try:
        yield Backend(name, url, prefix, db, store, timeouts, sent, explain, raw)
    finally:
        try:
            await db.close()
        finally:
            cleaner = (_postgres if name == "postgres" else _mysql)(prefix)[0]
            await cleaner.drop_tables()
            await cleaner.close()
            res = conn.close()
            if hasattr(res, "__await__"):
                await res


#: A number sequence for bulk rows, in both dialects (MariaDB's CTE recursion is fine; this is
#: a cross join of digits so that MySQL's recursion limit does not matter either).
_NUMBERS = (
    "(SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS n FROM {d} a, {d} b, "
    "{d} c, {d} e, {d} f)"
).format(d="(" + " UNION ALL ".join(f"SELECT {i} AS d" for i in range(10)) + ")")


async def _bulk_runs(b: Backend, workflow: str, count: int) -> None:
    """``count`` completed runs of ``workflow`` straight into the table (they only make the
    table big enough that the planner prefers the selective index it has, as at scale)."""
    text = (lambda x: f"CONCAT('{x}', n)") if b.name == "mysql" else (lambda x: f"'{x}' || n")
    active = "NULL" if b.name == "mysql" else "false"
    await b.raw(
        f"INSERT INTO {b.prefix}records (run_id, workflow_name, foreign_id, run_state, status, "
        "object, created_at, updated_at, version, run_state_reason, status_description, active) "
        f"SELECT {text(workflow + '-bulk-')}, '{workflow}', {text('f-')}, 5, 3, '', n, n, 1, "
        f"'', '', {active} "
        f"FROM {_NUMBERS} g WHERE n < {count}"
    )


async def _analyze(b: Backend, table: str) -> None:
    # (VACUUM: PostgreSQL's visibility map, which index-only scans need, as autovacuum keeps it)
    await b.raw(f"{'ANALYZE TABLE' if b.name == 'mysql' else 'VACUUM ANALYZE'} {b.prefix}{table}")


BULK = 20_000


async def _seed(b: Backend, n: int = 200) -> list[Record]:
    # Old completed runs first (lower seq: a cursor has many before it), then runs in every
    # status and state
    await b.db.open()
    await _bulk_runs(b, "wf", BULK)
    await _bulk_runs(b, "other", BULK // 4)
    runs = [_record("wf", i) for i in range(n)]
    for r in runs:
        await b.store.create(r, _event(r))
    await _analyze(b, "records")
    return runs


#: The UI's lists: (name, filter, the indexes that may serve them).
LISTS = [
    ("newest first", None, ("records_by_workflow", "records_seq")),
    # (no index has the status, which every transition changes: the workflow's runs in
    # creation order, filtered)
    ("a status", RecordFilter(statuses=(2,)), ("records_by_workflow", "records_seq")),
    ("a run state", RecordFilter(run_states=(RunState.PAUSED,)), ("records_by_run_state",)),
    ("a foreign ID", RecordFilter(foreign_ids=("fid-3",)), ("records_by_foreign_id",)),
    (
        "a status and a run state",
        RecordFilter(statuses=(2,), run_states=(RunState.RUNNING,)),
        ("records_by_run_state",),
    ),
    (
        "a time range",
        RecordFilter(
            created_after=NOW + timedelta(seconds=50), created_before=NOW + timedelta(seconds=60)
        ),
        ("records_by_created",),
    ),
]


async def test_every_list_of_the_ui_and_the_counts_read_an_index(backend: Backend) -> None:
    b = backend
    runs = await _seed(b)
    for name, flt, indexes in LISTS:
        timed = flt is not None and flt.created_after is not None
        # (a cursor inside what the filter matches: the UI's next page)
        cursor = runs[55 if timed else 120].run_id
        for order in (Order.DESC, Order.ASC):
            for after in (None, cursor):
                b.sent.clear()
                await b.store.list("wf", limit=51, order=order, filter=flt, after=after)
                sql, args = b.sent[-1]
                plan = await b.explain(sql, args)
                where = (name, order, after is not None, sql, plan)
                assert "Seq Scan" not in plan, where
                assert "type=ALL" not in plan, where
                assert any(b.prefix + i in plan for i in indexes), where
                # in the list's order straight from the index: no sort of what matched
                assert "Sort" not in plan, where
                assert "filesort" not in plan, where
    b.sent.clear()
    counts = await b.store.count_runs("wf")
    assert dict(counts.statuses) == {**dict.fromkeys(range(1, 6), 40), 3: 40 + BULK}
    assert dict(counts.run_states) == {**dict.fromkeys(STATES, 50), RunState.COMPLETED: 50 + BULK}
    [(sql, args)] = b.sent
    plan = await b.explain(sql, args, ordered=False)
    # An index on the workflow can serve it: one range, the other workflows' runs unread.
    # (MariaDB rightly scans the table instead when, as here, the workflow has most of it.)
    if b.name == "postgres":
        assert f"{b.prefix}records_by_" in plan, plan
        assert "Seq Scan" not in plan, plan


async def test_no_index_of_the_runs_has_the_status(backend: Backend) -> None:
    # Every transition changes the status: an index on it would be rewritten each time (and on
    # PostgreSQL would end HOT updates)
    b = backend
    await b.db.open()
    table = f"{b.prefix}records"
    if b.name == "postgres":
        import asyncpg

        conn = await asyncpg.connect(b.url)
        try:
            rows = await conn.fetch(
                "SELECT i.relname, a.attname FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey) "
                "WHERE t.relname = $1",
                table,
            )
        finally:
            await conn.close()
        found = [(r[0], r[1]) for r in rows]
    else:
        rows = await b.db.fetch(
            "SELECT index_name, column_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )
        found = [(str(r[0]), str(r[1])) for r in rows]
    indexes = {name for name, _ in found}
    assert f"{table}_by_run_state" in indexes, found
    assert f"{table}_by_created" in indexes, found
    assert not [name for name, column in found if column == "status"], found


async def test_list_for_run_reads_the_visit_index(backend: Backend) -> None:
    b = backend
    for i in range(50):
        await b.timeouts.create("wf", "fid", f"run-{i % 10}", i % 3, i, NOW)
    text = "CONCAT('bulk-', n)" if b.name == "mysql" else "'bulk-' || n"
    await b.raw(
        f"INSERT INTO {b.prefix}timeouts (workflow_name, foreign_id, run_id, status, "
        f"run_version, expire_at, created_at) SELECT 'wf', 'fid', {text}, 1, 1, n, n "
        f"FROM {_NUMBERS} g WHERE n < 20000"
    )
    await _analyze(b, "timeouts")
    b.sent.clear()
    found = await b.timeouts.list_for_run("wf", "run-3")
    assert [t.run_version for t in found] == [3, 13, 23, 33, 43]
    sql, args = b.sent[-1]
    plan = await b.explain(sql, args, ordered=False)
    assert f"{b.prefix}timeouts_visit" in plan, plan


async def test_a_version_1_database_migrates_and_keeps_its_runs(backend: Backend) -> None:
    # Given a database as version 1 made it (its DDL file only), with runs in it
    b = backend
    [v1] = [m for m in load_migrations(b.db.dialect, b.prefix) if m.version == 1]
    for statement in v1.statements:
        await b.raw(statement)
    meta = f"{b.prefix}meta"
    key = "`key`" if b.name == "mysql" else "key"
    await b.raw(f"INSERT INTO {meta} ({key}, value) VALUES ('schema_version', '1')")
    at = int(NOW.timestamp()) * 1_000_000
    active = "NULL" if b.name == "mysql" else "false"
    for i, status in enumerate((3, 3, 4)):
        await b.raw(
            f"INSERT INTO {b.prefix}records (run_id, workflow_name, foreign_id, run_state, "
            "status, object, created_at, updated_at, version, run_state_reason, "
            f"status_description, active) VALUES ('old-{i}', 'wf', 'fid-old-{i}', 5, {status}, "
            f"'{{}}', {at - 10 + i}, {at - 10 + i}, 1, '', '', {active})"
        )
    assert await schema_version(b.url, prefix=b.prefix) == 1
    # Then this release refuses it until migrated
    with pytest.raises(errors.AdapterError, match=r"version 1 .*older.*statestream db migrate"):
        await b.store.lookup("x")
    await b.db.close()

    assert await migrate(b.url, prefix=b.prefix) == (1, SCHEMA_VERSION)
    assert await schema_version(b.url, prefix=b.prefix) == SCHEMA_VERSION

    db, store, _ = (_postgres if b.name == "postgres" else _mysql)(b.prefix)
    try:
        assert (await store.lookup("old-1")).status == 3
        runs = [_record("wf", i) for i in range(12)]
        for r in runs:
            await store.create(r, _event(r))
        listed = await store.list("wf", filter=RecordFilter(statuses=(3,)), order=Order.DESC)
        expected = [r.run_id for r in reversed(runs) if r.status == 3] + ["old-1", "old-0"]
        assert [r.run_id for r in listed] == expected
        counts = await store.count_runs("wf")
        assert counts.total == 15
        assert counts.run_states[RunState.COMPLETED] == 3 + 3
    finally:
        await db.close()
    assert await migrate(b.url, prefix=b.prefix) == (SCHEMA_VERSION, SCHEMA_VERSION)
