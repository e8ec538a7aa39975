from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "task_specs"


@pytest.fixture
def write(tmp_path):
    """Write a YAML file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write


# --- PostgreSQL (Debian's package; .ci/run installs it and starts one for the whole run) -----------


@pytest.fixture(scope="session")
def postgres_server():
    """The base URL of a PostgreSQL server on 127.0.0.1: LHOPT_TEST_POSTGRES's (`.ci/run` starts one),
    else a private one started here with scripts/postgres.sh and stopped at the end."""
    import os
    import socket
    import subprocess

    given = os.environ.get("LHOPT_TEST_POSTGRES")
    if given:
        yield given.rstrip("/")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import shutil
    import tempfile

    # Not under pytest's tmp_path: its parents are private to this user, and the server runs as `postgres`.
    where = tempfile.mkdtemp(prefix="lhopt-postgres-")
    script = ROOT / "scripts" / "postgres.sh"
    started = subprocess.run([str(script), "start", str(where), str(port)], capture_output=True, text=True)
    assert started.returncode == 0, f"cannot start PostgreSQL ({started.stderr.strip()}); apt-get install -y postgresql"
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([str(script), "stop", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the test server (dropped afterwards): its SQLAlchemy URL."""
    import uuid

    import sqlalchemy

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield f"{postgres_server}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
