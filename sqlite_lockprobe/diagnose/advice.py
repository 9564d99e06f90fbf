"""What to change, per pattern, with ready-to-paste snippets per stack.

Snippet keys: sqlite3, django, sqlalchemy, aiosqlite, pragma. Versions are checked: Django's
`transaction_mode` and `init_command` OPTIONS need Django >= 5.1; the SQLAlchemy recipe is the
2.x "connect" + "begin" event pair from its SQLite dialect docs; Python 3.12's `autocommit`
ignores `isolation_level`. `automatic=True` only where --compare-fix can apply the change by
editing scenario settings (BEGIN IMMEDIATE, journal_mode=WAL, busy_timeout, synchronous).
"""

from __future__ import annotations

from sqlite_lockprobe.findings import Advice

_SQLALCHEMY_IMMEDIATE = """\
from sqlalchemy import create_engine, event

engine = create_engine("sqlite:///app.db", connect_args={"timeout": 20})

@event.listens_for(engine, "connect")
def _no_driver_begin(dbapi_connection, connection_record):
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself

@event.listens_for(engine, "begin")
def _begin_immediate(conn):
    conn.exec_driver_sql("BEGIN IMMEDIATE")
# asyncio (create_async_engine): attach both listeners to engine.sync_engine"""

_SQLITE3_IMMEDIATE = """\
conn = sqlite3.connect("app.db", timeout=5.0, isolation_level="IMMEDIATE")
# Python >= 3.12 with autocommit=False ignores isolation_level; use instead:
# conn = sqlite3.connect("app.db", timeout=5.0, autocommit=True)
# conn.execute("BEGIN IMMEDIATE"); ...; conn.execute("COMMIT")"""


def begin_immediate() -> Advice:
    return Advice(
        text=(
            "Start every transaction that may write with BEGIN IMMEDIATE: it takes the write "
            "lock before the first read, so a conflict becomes an ordinary wait that "
            "busy_timeout covers instead of an instant failure. Alternatively retry the whole "
            "transaction from BEGIN, never the failed statement alone."
        ),
        snippets={
            "sqlite3": _SQLITE3_IMMEDIATE,
            "django": (
                '# Django >= 5.1, settings.py\nDATABASES["default"]["OPTIONS"] = '
                '{"transaction_mode": "IMMEDIATE", "timeout": 20}'
            ),
            "sqlalchemy": _SQLALCHEMY_IMMEDIATE,
            "aiosqlite": (
                "# keyword arguments go to sqlite3.connect\n"
                'db = await aiosqlite.connect("app.db", isolation_level="IMMEDIATE", timeout=5.0)'
            ),
            "pragma": "BEGIN IMMEDIATE;\n-- reads and writes\nCOMMIT;",
        },
        automatic=True,
        fix={"transaction": "immediate"},
    )


def busy_timeout(ms: int = 5000) -> Advice:
    seconds = ms / 1000
    return Advice(
        text=(
            f"Give every connection a busy timeout ({ms} ms): SQLite then sleeps and retries "
            "while another connection holds the lock instead of failing at once."
        ),
        snippets={
            "sqlite3": f'conn = sqlite3.connect("app.db", timeout={seconds})  # seconds',
            "django": (f'DATABASES["default"]["OPTIONS"] = {{"timeout": {seconds:g}}}  # seconds'),
            "sqlalchemy": (
                f'engine = create_engine("sqlite:///app.db", connect_args={{"timeout": {seconds}}})'
            ),
            "aiosqlite": f'db = await aiosqlite.connect("app.db", timeout={seconds})',
            "pragma": f"PRAGMA busy_timeout = {ms};",
        },
        automatic=True,
        fix={"busy_timeout_ms": ms},
    )


def raise_busy_timeout_stopgap(ms: int) -> Advice:
    base = busy_timeout(ms)
    return Advice(
        text=(
            f"As a stopgap only, raise busy_timeout (to {ms} ms or more): it hides the wait "
            "instead of removing it, and the holder still blocks every other writer."
        ),
        snippets=base.snippets,
        automatic=True,
        fix={"busy_timeout_ms": ms},
    )


def wal_mode(synchronous_normal: bool = True) -> Advice:
    pragma = "PRAGMA journal_mode = WAL;  -- persistent: set once per database file"
    if synchronous_normal:
        pragma += "\nPRAGMA synchronous = NORMAL;  -- per connection; safe in WAL mode"
    return Advice(
        text=(
            "Switch the database to WAL mode: readers and the writer no longer block each "
            "other, and commits do not wait for readers. With WAL, synchronous=NORMAL makes "
            "commits much cheaper and stays consistent after a crash."
        ),
        snippets={
            "sqlite3": (
                'conn.execute("PRAGMA journal_mode=WAL")\nconn.execute("PRAGMA synchronous=NORMAL")'
            ),
            "django": (
                '# Django >= 5.1\nDATABASES["default"]["OPTIONS"] = {"init_command": '
                '"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}'
            ),
            "sqlalchemy": (
                '@event.listens_for(engine, "connect")\n'
                "def _wal(dbapi_connection, connection_record):\n"
                '    dbapi_connection.execute("PRAGMA journal_mode=WAL")\n'
                '    dbapi_connection.execute("PRAGMA synchronous=NORMAL")'
            ),
            "aiosqlite": (
                'await db.execute("PRAGMA journal_mode=WAL")\n'
                'await db.execute("PRAGMA synchronous=NORMAL")'
            ),
            "pragma": pragma,
        },
        automatic=True,
        fix={"journal_mode": "wal", **({"synchronous": "normal"} if synchronous_normal else {})},
    )


def synchronous_normal() -> Advice:
    return Advice(
        text=(
            "In WAL mode set synchronous=NORMAL: a commit no longer waits for fsync, so each "
            "writer holds the lock for less time and the queue drains faster."
        ),
        snippets={
            "sqlite3": 'conn.execute("PRAGMA synchronous=NORMAL")',
            "django": (
                '# Django >= 5.1\nDATABASES["default"]["OPTIONS"] = '
                '{"init_command": "PRAGMA synchronous=NORMAL;"}'
            ),
            "sqlalchemy": (
                '@event.listens_for(engine, "connect")\n'
                "def _sync(dbapi_connection, connection_record):\n"
                '    dbapi_connection.execute("PRAGMA synchronous=NORMAL")'
            ),
            "aiosqlite": 'await db.execute("PRAGMA synchronous=NORMAL")',
            "pragma": "PRAGMA synchronous = NORMAL;",
        },
        automatic=True,
        fix={"synchronous": "normal"},
    )


def short_transactions() -> Advice:
    return Advice(
        text=(
            "Keep write transactions short: do slow work (network calls, sleeps, awaits, file "
            "I/O, big computations) before BEGIN or after COMMIT, commit right after the last "
            "write, and split huge batches. A slow statement inside the hold needs an index or "
            "a smaller batch."
        ),
        snippets={
            "sqlite3": (
                "data = fetch_remote()          # slow work first, outside the transaction\n"
                "with conn:                     # BEGIN ... COMMIT around the writes only\n"
                '    conn.execute("INSERT INTO t VALUES (?)", (data,))'
            ),
            "django": (
                "data = fetch_remote()  # outside the atomic block\n"
                "with transaction.atomic():\n    Item.objects.create(data=data)"
            ),
            "sqlalchemy": (
                "data = fetch_remote()  # outside the session transaction\n"
                "with Session(engine) as session, session.begin():\n"
                "    session.add(Item(data=data))"
            ),
            "aiosqlite": (
                "data = await fetch_remote()  # never await slow work between writes\n"
                'await db.execute("INSERT INTO t VALUES (?)", (data,))\nawait db.commit()'
            ),
        },
        automatic=False,
    )


def one_connection_per_thread() -> Advice:
    return Advice(
        text=(
            "Never make a thread (or an asyncio event loop) wait on a lock that another "
            "connection driven by the same thread holds: it can never be released. Run "
            "blocking sqlite3 calls off the event loop (FastAPI: plain `def` endpoints run in "
            "the threadpool), do not await inside a transaction, use one connection per thread, "
            "or funnel writes through one writer connection."
        ),
        snippets={
            "sqlite3": (
                "# one thread, one connection: reuse it instead of opening a second one\n"
                'conn = sqlite3.connect("app.db", timeout=5.0)'
            ),
            "django": (
                "# async views: wrap ORM work so it runs in a worker thread\n"
                "from asgiref.sync import sync_to_async\n"
                "await sync_to_async(save_order, thread_sensitive=True)(order)"
            ),
            "sqlalchemy": (
                "# FastAPI: `def` (not `async def`) endpoints using a sync Session run in the\n"
                "# threadpool; or use create_async_engine with one shared writer connection"
            ),
            "aiosqlite": (
                "# one shared connection for writes, opened once at startup\n"
                'app.state.db = await aiosqlite.connect("app.db", timeout=5.0)'
            ),
        },
        automatic=False,
    )


def single_writer() -> Advice:
    return Advice(
        text=(
            "Funnel writes through one connection or a writer queue instead of letting many "
            "connections race for the single write lock; batch many rows per transaction."
        ),
        snippets={
            "sqlite3": (
                "# one writer thread consumes a queue.Queue of rows and commits in batches\n"
                "with conn:\n"
                '    conn.executemany("INSERT INTO t VALUES (?)", batch)'
            ),
            "django": (
                "# batch rows in one transaction\n"
                "with transaction.atomic():\n    Item.objects.bulk_create(items)"
            ),
            "sqlalchemy": (
                "# a pool of one connection serialises writers inside the process\n"
                'engine = create_engine("sqlite:///app.db", pool_size=1, max_overflow=0)'
            ),
            "aiosqlite": (
                "# one connection shared by all tasks, opened once\n"
                'db = await aiosqlite.connect("app.db", timeout=5.0)\n'
                'await db.executemany("INSERT INTO t VALUES (?)", rows)\nawait db.commit()'
            ),
        },
        automatic=False,
    )


def short_readers() -> Advice:
    return Advice(
        text=(
            "Shorten read transactions and leave moments with no reader, so checkpoints can "
            "reach the end of the WAL; exhaust or close cursors and commit after reading; run "
            "a TRUNCATE checkpoint at quiet times and cap the leftover file size."
        ),
        snippets={
            "sqlite3": (
                "rows = conn.execute(query).fetchall()  # exhaust the cursor\n"
                "conn.commit()  # ends the read transaction (Python 3.12 autocommit=False)\n"
                'conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # at a quiet time'
            ),
            "django": "rows = list(Item.objects.filter(...))  # evaluate now; no open cursor",
            "sqlalchemy": (
                "with Session(engine) as session:  # session ends the read transaction\n"
                "    rows = session.scalars(select(Item)).all()"
            ),
            "aiosqlite": (
                "async with db.execute(query) as cursor:\n    rows = await cursor.fetchall()"
            ),
            "pragma": (
                "PRAGMA wal_checkpoint(TRUNCATE);  -- at a quiet time\n"
                "PRAGMA journal_size_limit = 67108864;  -- trim the -wal to 64 MiB after reset"
            ),
        },
        automatic=False,
    )


def close_external_holder() -> Advice:
    return Advice(
        text=(
            "Close, commit or roll back in the program named above: while it keeps its "
            "transaction open (a DB browser with unsaved edits, a sqlite3 shell after BEGIN, a "
            "script paused in a debugger) every writer of this database waits and fails."
        ),
        snippets={
            "sqlite3": (
                "# in that program: end the transaction, and close what it no longer needs\n"
                "conn.commit()  # or conn.rollback()\nconn.close()"
            ),
            "pragma": "-- in that program's session (sqlite3 shell, DB browser)\nCOMMIT;",
        },
    )


def read_only_tools() -> Advice:
    return Advice(
        text=(
            "Open browsing, reporting and backup tools read-only, so they never take the write "
            "lock (`?mode=ro`). `nolock=1` skips locking altogether: only for files nobody "
            "writes while they are open. For backups use SQLite's online backup "
            "(`.backup` in the shell, `Connection.backup` in Python), which copies in steps."
        ),
        snippets={
            "sqlite3": (
                'conn = sqlite3.connect("file:app.db?mode=ro", uri=True)\n'
                'conn.backup(sqlite3.connect("backup.db"))  # a consistent copy'
            ),
            "pragma": "-- shell: sqlite3 'file:app.db?mode=ro'\n.backup backup.db",
        },
    )


def schedule_elsewhere() -> Advice:
    return Advice(
        text=(
            "If the other program is a job (cron, backup, migration, another service), run it "
            "when the application is idle, give it short transactions, or let one process own "
            "the database and serve the others."
        ),
        snippets={
            "sqlite3": (
                "# a job sharing the database: one short transaction per batch, a long timeout\n"
                'conn = sqlite3.connect("app.db", timeout=30.0)\n'
                "for batch in batches:\n"
                '    conn.executemany("INSERT INTO t VALUES (?)", batch)\n'
                "    conn.commit()"
            ),
            "pragma": "-- see who holds which lock right now: lockprobe inspect app.db",
        },
    )


def no_shared_cache() -> Advice:
    return Advice(
        text=(
            "Do not use shared cache (`cache=shared`; SQLite itself discourages it): its table "
            "locks fail at once with SQLITE_LOCKED, which no busy_timeout covers. For an "
            "in-memory database shared between threads use one connection for all of them, or "
            "a temporary file (each connection then has its own cache and waits normally)."
        ),
        snippets={
            "sqlite3": (
                "import tempfile\n\n"
                "# a temporary file instead of file::memory:?cache=shared\n"
                'path = tempfile.NamedTemporaryFile(suffix=".db", delete=False).name\n'
                "conn = sqlite3.connect(path, timeout=5.0)"
            ),
            "django": (
                "# settings for tests: a file-based test database instead of the shared-cache\n"
                "# in-memory one (LiveServerTestCase and threads then wait instead of failing)\n"
                'DATABASES["default"]["TEST"] = {"NAME": "test_db.sqlite3"}'
            ),
            "sqlalchemy": (
                "from sqlalchemy.pool import StaticPool\n\n"
                "# one connection shared by every thread for an in-memory database\n"
                'engine = create_engine("sqlite://", poolclass=StaticPool,\n'
                '                       connect_args={"check_same_thread": False})'
            ),
            "pragma": (
                "-- open the database without ?cache=shared\n"
                "-- (and never call sqlite3_enable_shared_cache(1))"
            ),
        },
    )


def finish_cursors() -> Advice:
    return Advice(
        text=(
            "Exhaust or close every cursor before writing to its table or running DDL: an "
            "unfinished SELECT keeps its table (and on its own connection, DROP TABLE) locked. "
            "Fetch all rows first (`fetchall()`), or close the cursor when you stop early."
        ),
        snippets={
            "sqlite3": (
                'rows = conn.execute("SELECT id FROM item").fetchall()  # finished at once\n'
                'cur = conn.execute("SELECT id FROM item")\n'
                "first = cur.fetchone()\n"
                "cur.close()  # stopped early: close it before the next write or DDL\n"
                'conn.execute("DROP TABLE old_item")'
            ),
            "django": (
                "# materialise querysets before writing in the same request/test:\n"
                "ids = list(Item.objects.values_list('id', flat=True))"
            ),
        },
    )


def finish_unfinished_reads() -> Advice:
    return Advice(
        text=(
            "Finish reading before anything slow: a cursor left unfinished outside a "
            "transaction keeps its read lock (SHARED in rollback-journal mode) until it is "
            "fetched to the end or closed, and every COMMIT waits for it. Fetch the rows "
            "first, close the cursor when you stop early, or read a large export in chunks "
            "that each finish (keyset pagination)."
        ),
        snippets={
            "sqlite3": (
                'rows = conn.execute("SELECT id, name FROM items").fetchall()  # lock released\n'
                "# or, a large export in chunks that each finish:\n"
                "last = 0\n"
                'page = "SELECT id, name FROM items WHERE id > ? ORDER BY id LIMIT 1000"\n'
                "while chunk := conn.execute(page, (last,)).fetchall():\n"
                "    write_out(chunk)\n"
                "    last = chunk[-1][0]"
            ),
            "django": (
                "# .iterator() keeps a cursor open while you loop: materialise, or use chunks\n"
                "for item in Item.objects.all():  # fetched at once, cursor finished\n"
                "    write_out(item)"
            ),
            "sqlalchemy": (
                "rows = session.execute(select(Item)).scalars().all()  # finished at once"
            ),
        },
    )


def find_the_holder() -> Advice:
    return Advice(
        text=(
            "Find out who held the lock: trace every program that opens this database "
            "(`lockprobe trace -- ...`: a process outside the recording cannot be named), and "
            "while the failures happen run `lockprobe inspect app.db --watch`, which reads the "
            "OS lock table and names the process holding each SQLite lock."
        ),
        snippets={
            "sqlite3": (
                "# every program on this database, recorded together\n"
                "# lockprobe trace --json report.json -- python app.py\n"
                "# and meanwhile, in another terminal:\n"
                "# lockprobe inspect app.db --watch 0.2"
            ),
            "pragma": "-- see who holds which lock right now: lockprobe inspect app.db",
        },
    )
