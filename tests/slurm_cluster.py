"""A private single-node Slurm for the tests of the Slurm profile (tests/test_slurm.py).

Nothing of the system's configuration is touched: slurm.conf, state, spool, logs and pid files live in a
temporary directory, the daemons run in the foreground as children of the test process (`-D -f CONF`) on
free TCP ports, and every client finds the cluster through `SLURM_CONF` in `SlurmCluster.env`. The only shared
piece is munge: if its socket does not answer, munged is started (and stopped again at the end).

On a machine without Slurm, the packages `slurm-wlm munge` are installed with apt-get when we are root (so that
a fresh CI machine runs the tests); whatever stops the cluster from coming up makes the tests skip, with the
reason and the daemons' log tails, never fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pytest

SBIN = Path("/usr/sbin")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_PIDFILE = Path("/run/munge/munged.pid")
PARTITION = "debug"


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _daemon(name: str) -> str | None:
    found = shutil.which(name) or (str(SBIN / name) if (SBIN / name).is_file() else None)
    return found


def _install_slurm() -> str | None:
    """Install slurm-wlm and munge with apt-get; None on success, else why not."""
    if os.geteuid() != 0:
        return "slurmctld is not installed, and installing slurm-wlm needs root"
    if not shutil.which("apt-get"):
        return "slurmctld is not installed, and there is no apt-get to install slurm-wlm"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]):
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            if out.returncode != 0:
                return f"`{' '.join(cmd)}` failed: {out.stderr[-1500:]}"
    except subprocess.TimeoutExpired:
        return "installing slurm-wlm and munge with apt-get took over 300 s"
    return None


def _munge_answers() -> bool:
    if not (shutil.which("munge") and shutil.which("unmunge")):
        return False
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _start_munge() -> tuple[int | None, str | None]:
    """(pid of a munged we started or None, error or None)."""
    if _munge_answers():
        return None, None
    munged = _daemon("munged")
    if munged is None:
        return None, "munged is not installed"
    if os.geteuid() != 0:
        return None, "munge does not answer, and starting munged needs root"
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    out = subprocess.run(["runuser", "-u", "munge", "--", munged], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None, f"munged did not start: {out.stderr.strip()[-800:]}"
    for _ in range(50):
        if _munge_answers():
            try:
                return int(MUNGE_PIDFILE.read_text().split()[0]), None
            except (OSError, ValueError, IndexError):
                return None, None
        time.sleep(0.2)
    return None, "munged started but `munge -n | unmunge` fails"


def _real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)  # a bit below the total, or slurmd drains the node
    return 1000


class SlurmCluster:
    """slurmctld + slurmd of one node, configured in `root`, on free ports."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        bin_dir = str(Path(sys.executable).parent)  # the venv's snakemake and dfcil, for the jobs too
        self.shims = root / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{self.shims}:{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def write_shims(self) -> None:
        """Inside a job, the jobstep executor plugin (0.6.1) calls `srun` with every SLURM_* variable but a few
        removed, SLURM_CONF included, so that srun looks for /etc/slurm/slurm.conf, which this private cluster
        must not write. The jobs inherit PATH (sbatch --export=ALL): an `srun` first on it puts SLURM_CONF back."""
        self.shims.mkdir(parents=True, exist_ok=True)
        srun = self.shims / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun") or "/usr/bin/srun"} "$@"\n')
        srun.chmod(0o755)

    def write_conf(self) -> None:
        for d in ("state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=dfciltest",
            f"SlurmctldHost={self.node}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "MpiDefault=none",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MinJobAge=300",  # squeue (the profile's status command) sees a finished job this long
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            f"NodeName={self.node} CPUs={os.cpu_count()} RealMemory={_real_memory_mb()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log (last lines) ---\n{_tail(self.root / 'log' / f'{name}.log')}"
                         for name in ("slurmctld", "slurmd"))

    def start(self, timeout: float = 60) -> str | None:
        """Start both daemons and wait for the node to be idle; None when up, else why not."""
        self.write_conf()
        self.write_shims()
        for name, extra in (("slurmctld", ["-i"]), ("slurmd", ["-N", self.node])):
            self.procs[name] = subprocess.Popen(
                [_daemon(name), "-D", "-f", str(self.conf), *extra], env=self.env, stdin=subprocess.DEVNULL,
                stdout=open(self.root / "log" / f"{name}.out", "wb"), stderr=subprocess.STDOUT)
            time.sleep(1 if name == "slurmctld" else 0)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    return (f"{name} exited with status {proc.returncode}:\n{_tail(self.root / 'log' / f'{name}.out')}"
                            f"\n{self.logs()}")
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.env,
                                 timeout=30)
            state = (out.stdout.strip() or out.stderr.strip())
            if out.returncode == 0 and state == "idle":
                return None
            time.sleep(1)
        return f"the node is not idle after {timeout:.0f} s (sinfo: {state!r})\n{self.logs()}"

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.scancel_all()
        for name in ("slurmd", "slurmctld"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # clients -------------------------------------------------------------------------------------------------
    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout)

    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (finished ones for MinJobAge): id, name, state, comment."""
        out = self.run("squeue", "-h", "-a", "-t", "all", "-o", "%i|%j|%T|%k")
        out.check_returncode()
        return [dict(zip(("id", "name", "state", "comment"), line.split("|", 3)))
                for line in out.stdout.splitlines() if line.strip()]

    def scancel(self, *job_ids: str) -> None:
        self.run("scancel", *job_ids).check_returncode()

    def scancel_all(self, timeout: float = 30) -> None:
        """Cancel every job of this private cluster and wait until none runs."""
        self.run("scancel", "--user", str(os.getuid()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(j["state"] in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")
                       for j in self.jobs()):
                return
            time.sleep(1)


def start_cluster() -> tuple[SlurmCluster | None, int | None, str | None]:
    """(cluster, pid of a munged we started, None) or (None, None, why the cluster cannot run here)."""
    if _daemon("slurmctld") is None or _daemon("slurmd") is None or not shutil.which("sbatch"):
        error = _install_slurm()
        if error:
            return None, None, error
        if _daemon("slurmctld") is None:
            return None, None, "apt-get installed slurm-wlm but there is still no slurmctld"
    if os.geteuid() != 0:
        return None, None, "a private Slurm with SlurmUser=root needs root"
    munged, error = _start_munge()
    if error:
        return None, None, error
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="dfcil-slurm-")))
    error = cluster.start()
    if error:
        cluster.stop()
        _stop_munge(munged)
        shutil.rmtree(cluster.root, ignore_errors=True)  # its log tails are in `error`
        return None, None, f"the private Slurm cluster did not come up: {error}"
    return cluster, munged, None


def _stop_munge(pid: int | None) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster, munged, error = start_cluster()
    if error:
        pytest.skip(error)
    try:
        yield cluster
    finally:
        cluster.stop()
        _stop_munge(munged)
        shutil.rmtree(cluster.root, ignore_errors=True)
