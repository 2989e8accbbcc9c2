"""Real servers for the slow tier, each in a fresh temporary folder on free ports: a PostgreSQL server
(the team tracking store) and a single-node Slurm cluster (munged, MariaDB for slurmdbd, slurmdbd, slurmctld,
slurmd). Each refuses to start with one reason when its programs are missing, so a test can skip with it."""

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binaries() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl (on PATH, or Debian's /usr/lib/postgresql/<version>/bin)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot start here (or featsweep cannot reach it), or None."""
    import importlib.util

    if postgres_binaries() is None:
        return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
    if importlib.util.find_spec("psycopg") is None:
        return "the PostgreSQL driver is missing: pip install 'featsweep[postgres]'"
    return None


class PostgresCluster:
    """A real PostgreSQL server in a fresh folder, on a free port, with a password-protected user ``featsweep``.
    PostgreSQL refuses to run as root, so as root it runs as Debian's unprivileged ``postgres`` user."""

    PASSWORD = "pw-Zq7x-not-logged"

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="featsweep-pg-"))  # not under pytest's root-only tmp folder
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        password_file = self.dir / "password"
        password_file.write_text(self.PASSWORD)
        if self.as_user:
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "featsweep", "--auth=scram-sha-256",
                  f"--pwfile={password_file}", "-E", "UTF8", "--no-instructions")
        self._run("pg_ctl", "start", "-w", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"), "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True, text=True,
                       timeout=120)

    def uri(self, database: str = "mlflow") -> str:
        return f"postgresql://featsweep:{self.PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.dir / "data"))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


SLURM_PROGRAMS = ("munged", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd", "sbatch",
                  "sacct", "scontrol")
SLURM_PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"


def slurm_missing() -> str | None:
    """Why a single-node Slurm cluster cannot start here, or None."""
    missing = [p for p in SLURM_PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"Slurm's programs {', '.join(missing)} are not installed: apt-get install {SLURM_PACKAGES}"
    if os.geteuid() != 0:
        return "a single-node Slurm cluster needs root (slurmd starts each job as its user)"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """A real single-node Slurm cluster on this host. Accounting goes through slurmdbd into a MariaDB server,
    because submitit follows its jobs with ``sacct``. munged runs as ``munge`` and MariaDB as ``mysql`` (each
    refuses root); the Slurm daemons run as root. Commands find the cluster through ``env`` (SLURM_CONF)."""

    DB_PASSWORD = "slurmdb-not-logged"

    def __init__(self, cpus: int = 4, timeout: float = 60):
        self.dir = Path(tempfile.mkdtemp(prefix="featsweep-slurm-"))
        self.dir.chmod(0o755)  # munge and mysql must reach their folders
        self.node = socket.gethostname().split(".")[0]
        self.env = {"SLURM_CONF": str(self.dir / "slurm.conf")}
        self._daemons: list[subprocess.Popen] = []
        try:
            self._start(cpus, timeout)
        except BaseException:
            self.stop()
            raise

    def _folder(self, name: str, owner: str | None = None, mode: int = 0o755) -> Path:
        folder = self.dir / name
        folder.mkdir(mode=mode)
        if owner:
            user = pwd.getpwnam(owner)
            os.chown(folder, user.pw_uid, user.pw_gid)
        return folder

    def _daemon(self, *command: str, log: str) -> None:
        out = open(self.dir / "logs" / log, "w")
        self._daemons.append(subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                              env=dict(os.environ, **self.env), start_new_session=True))

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args[0]} exited while waiting for {what}; logs in {self.dir / 'logs'}")
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not come up in {timeout:.0f} s; logs in {self.dir / 'logs'}")

    def _ok(self, *command: str) -> bool:
        return subprocess.run(list(command), capture_output=True, env=dict(os.environ, **self.env), timeout=30).returncode == 0

    def _start(self, cpus: int, timeout: float) -> None:
        self._folder("logs")
        # munge: a private key and socket, so nothing depends on (or disturbs) a system munged
        munge = self._folder("munge", owner="munge", mode=0o711)  # the socket's folder: execute for all
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        user = pwd.getpwnam("munge")
        os.chown(key, user.pw_uid, user.pw_gid)
        key.chmod(0o400)
        self.munge_socket = munge / "munge.socket"
        self._daemon("runuser", "-u", "munge", "--", _program("munged"), "--foreground", f"--key-file={key}",
                     f"--socket={self.munge_socket}", f"--pid-file={munge / 'munged.pid'}",
                     f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}", log="munged.out")
        self._wait("munged", self.munge_socket.exists, timeout)
        # MariaDB for slurmdbd: a fresh data folder, root by the OS user (socket), slurm by password over TCP
        db = self._folder("db", owner="mysql")
        subprocess.run([_program("mariadb-install-db"), "--no-defaults", f"--datadir={db / 'data'}", "--user=mysql",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self.db_port, db_socket = free_port(), db / "mysql.sock"
        self._daemon("runuser", "-u", "mysql", "--", _program("mariadbd"), "--no-defaults", f"--datadir={db / 'data'}",
                     f"--socket={db_socket}", f"--port={self.db_port}", "--bind-address=127.0.0.1", "--skip-log-bin",
                     "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0", log="mariadbd.out")
        sql = [_program("mariadb"), "--no-defaults", f"--socket={db_socket}", "-u", "root"]
        self._wait("MariaDB", lambda: self._ok(*sql, "-e", "SELECT 1"), timeout)
        subprocess.run([*sql, "-e", f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.DB_PASSWORD}'; "
                        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"], check=True, capture_output=True)
        # slurmdbd, then slurmctld (it registers the cluster with slurmdbd), then slurmd
        self.dbd_port, self.ctld_port, self.slurmd_port = free_port(), free_port(), free_port()
        self._write_configs(cpus)
        self._daemon(_program("slurmdbd"), "-D", log="slurmdbd.out")
        self._wait("slurmdbd", lambda: self._port_open(self.dbd_port), timeout)
        self._folder("state")
        self._folder("spool")
        self._daemon(_program("slurmctld"), "-D", "-i", log="slurmctld.out")
        self._wait("slurmctld", lambda: self._ok("scontrol", "ping"), timeout)
        self._daemon(_program("slurmd"), "-D", "-N", self.node, log="slurmd.out")
        self._wait("the node", lambda: "idle" in self.node_state(), timeout)
        self._wait("accounting", lambda: self._ok("sacct", "-n", "-a"), timeout)

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def _write_configs(self, cpus: int) -> None:
        d, auth = self.dir, f"socket={self.munge_socket}"
        dbd = self.dir / "slurmdbd.conf"  # read from SLURM_CONF's folder; slurmdbd wants it private
        dbd.write_text("\n".join([
            "AuthType=auth/munge", f"AuthInfo={auth}", "DbdHost=localhost", "DbdAddr=127.0.0.1",
            f"DbdPort={self.dbd_port}", "SlurmUser=root", f"PidFile={d}/slurmdbd.pid", f"LogFile={d}/logs/slurmdbd.log",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={self.db_port}",
            "StorageUser=slurm", f"StoragePass={self.DB_PASSWORD}", "StorageLoc=slurm_acct_db", ""]))
        dbd.chmod(0o600)
        (self.dir / "slurm.conf").write_text("\n".join([
            "ClusterName=featsweep", f"SlurmctldHost={self.node}(127.0.0.1)", f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}", "SlurmUser=root", "AuthType=auth/munge", f"AuthInfo={auth}",
            f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool", f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd.pid", f"SlurmctldLogFile={d}/logs/slurmctld.log",
            f"SlurmdLogFile={d}/logs/slurmd.log",
            # no cgroups in a container: processes tracked by their parent, no task binding
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SlurmdParameters=config_overrides",
            "ReturnToService=2", "KillWait=30", "InactiveLimit=0", "MinJobAge=600",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.dbd_port}",
            f"AccountingStoragePass={self.munge_socket}",  # the munge socket for slurmdbd's connection
            "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))

    def node_state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-n", self.node, "-o", "%T"], capture_output=True, text=True,
                              env=dict(os.environ, **self.env), timeout=30)
        return proc.stdout.strip()

    def job_states(self) -> dict[str, str]:
        """Every job's state in the accounting database (sacct, as submitit reads it)."""
        proc = subprocess.run(["sacct", "-a", "-X", "-n", "--parsable2", "-o", "JobID,State"], capture_output=True,
                              text=True, env=dict(os.environ, **self.env), timeout=30, check=True)
        return dict(line.split("|")[:2] for line in proc.stdout.splitlines() if line)

    def stop(self) -> None:
        for daemon in reversed(self._daemons):  # slurmd first, munged last
            if daemon.poll() is None:
                os.killpg(daemon.pid, 15)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, 9)
        shutil.rmtree(self.dir, ignore_errors=True)
