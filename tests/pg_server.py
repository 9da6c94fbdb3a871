"""A throwaway PostgreSQL server for the tests that need a real one (Debian's postgresql-15 package).

``postgres_url`` (session fixture; import it into a test module) runs ``initdb`` in a fresh
folder and starts ``postgres`` on a free loopback port with trust authentication and fsync off,
as the ``postgres`` user when the tests run as root (the server refuses root). It yields a
SQLAlchemy URL to a new database and stops the server afterwards. Skipped, with the reason, when
the server binaries are not installed. ``PG_BIN`` overrides where they are looked for.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest


def _bin_dir() -> Optional[Path]:
    candidates = [os.environ.get("PG_BIN", "")] + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql "
                    "(or set PG_BIN) to run the tests against a real PostgreSQL")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed: pip install 'explorer[postgres]'")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="explorer-pg-", dir="/tmp"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    try:
        subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "explorer",
                                 "--no-sync", "-E", "UTF8"], **run)
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=50")
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts,
                                 "-w", "-t", "60", "start"], **run)
    except subprocess.CalledProcessError as err:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {err.stderr or err.stdout}\n{log}") from None
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=explorer dbname=postgres",
                                 autocommit=True) as conn:
                conn.execute("CREATE DATABASE explorer_test")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    try:
        yield f"postgresql+psycopg://explorer@127.0.0.1:{port}/explorer_test"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_url: str, request: pytest.FixtureRequest) -> str:
    """A URL to a database of its own for one test (on the session's server)."""
    import re

    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    with psycopg.connect(f"host={url.host} port={url.port} user={url.username} dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return str(url.set(database=name))
