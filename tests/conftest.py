from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_private import PostgresUnavailable, PrivatePostgres

os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporter.demo import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out)
    return out


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server named by EXPORTER_TEST_POSTGRES_URL, dropped afterwards.

    Unset: skipped on a developer machine without PostgreSQL, but a failure in CI (.ci/run sets it)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get("EXPORTER_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("EXPORTER_TEST_POSTGRES_URL is not set in CI")
        pytest.skip("EXPORTER_TEST_POSTGRES_URL not set (no PostgreSQL server for this run)")
    name = f"exporter_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {base} is not reachable: {exc}")
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server per test module, which its tests may stop and start; fails (not skips) in CI
    when initdb/pg_ctl are missing."""
    try:
        pg = PrivatePostgres()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"these tests need a private PostgreSQL server: {exc}")
        pytest.skip(str(exc))
    try:
        pg.init().start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def pg(private_pg: PrivatePostgres) -> PrivatePostgres:
    """The module's server, running (a test that failed mid-outage may have left it stopped)."""
    if not private_pg.running:
        private_pg.start()
    return private_pg


KINDS = ("unit", "app", "process", "e2e", "repo")  # the folders of tests/, each a marker (pyproject.toml)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test is marked with its kind, its folder's name. Tests marked ``long`` run first: with -n 2 their
    minutes overlap the rest of the suite instead of trailing it."""
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)
    items.sort(key=lambda item: 0 if item.get_closest_marker("long") else 1)
