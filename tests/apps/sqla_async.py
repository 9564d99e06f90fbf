"""SQLAlchemy 2.x async with aiosqlite (tests/test_trace_frameworks.py): two sessions, each in
its own task; `holder` writes and keeps its transaction open until `waiter`'s write, which
waits for the lock, has given up (timeout 0.5 s). python sqla_async.py DB"""

import asyncio
import sys

from sqlalchemy import String, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


async def holder(engine, wrote, waiter_done):
    async with AsyncSession(engine) as session:
        session.add(Item(name="holder"))
        await session.flush()  # MARK: holder writes
        wrote.set()
        await waiter_done.wait()  # keeps its write transaction open meanwhile
        await session.commit()
    print("holder: committed")


async def waiter(engine, wrote, waiter_done):
    await wrote.wait()
    async with AsyncSession(engine) as session:
        session.add(Item(name="waiter"))
        try:
            await session.flush()  # MARK: waiter writes
            await session.commit()
            print("waiter: committed")
        except OperationalError as exc:
            print("waiter:", exc.orig)
            await session.rollback()
        finally:
            waiter_done.set()


async def main(path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.5})
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    wrote, waiter_done = asyncio.Event(), asyncio.Event()
    await asyncio.gather(
        asyncio.create_task(holder(engine, wrote, waiter_done), name="holder"),
        asyncio.create_task(waiter(engine, wrote, waiter_done), name="waiter"),
    )
    async with AsyncSession(engine) as session:
        names = (await session.scalars(select(Item.name).order_by(Item.id))).all()
    print("rows:", names)
    await engine.dispose()


asyncio.run(main(sys.argv[1]))
