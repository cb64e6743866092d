"""A real one-node SLURM cluster on localhost, for the tests that run nipype's SLURM plugin.

:func:`start_cluster` installs Debian's ``slurm-wlm`` and ``munge`` when they are missing
(as root, ``apt-get update`` first), writes ``tools/slurm/slurm.conf.in`` with this
machine's host name, cores and memory into a temporary folder, generates a munge key,
starts ``munged``, ``slurmctld`` and ``slurmd`` and waits until the node is idle.
``SLURM_CONF`` then points every ``sbatch``/``squeue`` of the process and its children at
it. :meth:`Cluster.stop` ends exactly the daemons it started.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF_TEMPLATE = REPO / "tools" / "slurm" / "slurm.conf.in"
PLUGIN_FILE = REPO / "tools" / "slurm" / "plugin.yml"
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


class CannotStart(RuntimeError):
    """SLURM cannot run here (the reason is the message): the tests skip."""


@dataclass
class Cluster:
    state: Path
    conf: Path
    pids: dict = field(default_factory=dict)

    @property
    def jobcomp(self) -> Path:
        return self.state / "jobcomp.txt"

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def jobs(self) -> list[dict]:
        """The controller's record of finished jobs (jobcomp/filetxt: ``Key=value`` fields)."""
        if not self.jobcomp.exists():
            return []
        rows = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if fields:
                rows.append(fields)
        return rows

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _install() -> None:
    """apt-get the packages (root only) when one of the daemons or clients is missing."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise CannotStart("slurm-wlm and munge are not installed and installing them needs "
                          "root (run the tests as root, or apt-get install slurm-wlm munge)")
    if not shutil.which("apt-get"):
        raise CannotStart("slurm-wlm and munge are not installed and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise CannotStart(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _wait_pidfile(path: Path, what: str, log: Path, timeout: float = 30) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().strip().isdigit():
            return int(path.read_text().strip())
        time.sleep(0.2)
    tail = log.read_text()[-1500:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s; its log ends:\n{tail}")


def _write_conf(state: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    values = {"HOST": host, "STATE": str(state), "CTLD_PORT": str(_free_port()),
              "SLURMD_PORT": str(_free_port()), "CPUS": str(os.cpu_count() or 1),
              "MEM_MB": str(int(mem_mb * 0.9))}
    text = CONF_TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    conf = state / "slurm.conf"
    conf.write_text(text)
    return conf


def start_cluster(state: Path, timeout: float = 60) -> Cluster:
    """Bring up munged, slurmctld and slurmd on localhost with their state in ``state``."""
    if os.geteuid() != 0:
        raise CannotStart("a local SLURM needs root (slurmd runs jobs as their owner)")
    _install()
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "slurmd", "munge"):
        (state / sub).mkdir(exist_ok=True)
    os.chmod(state / "munge", 0o700)
    cluster = Cluster(state, _write_conf(state))
    key = state / "munge" / "munge.key"
    subprocess.run([_sbin("mungekey"), "--create", f"--keyfile={key}"], check=True,
                   capture_output=True)
    os.chmod(key, 0o600)
    try:
        subprocess.run([_sbin("munged"), "--force", f"--key-file={key}",
                        f"--socket={state / 'munge.socket'}",
                        f"--pid-file={state / 'munge' / 'munged.pid'}",
                        f"--log-file={state / 'munge' / 'munged.log'}",
                        f"--seed-file={state / 'munge' / 'munged.seed'}"],
                       check=True, capture_output=True, text=True)
        cluster.pids["munged"] = _wait_pidfile(state / "munge" / "munged.pid", "munged",
                                               state / "munge" / "munged.log")
        env = cluster.env()
        for daemon, pidfile in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([_sbin(daemon), "-f", str(cluster.conf)], env=env, check=True,
                           capture_output=True, text=True)
            cluster.pids[daemon] = _wait_pidfile(state / pidfile, daemon,
                                                 state / f"{daemon}.log")
        _wait_idle(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_idle(cluster: Cluster, timeout: float) -> None:
    deadline, state = time.time() + timeout, ""
    while time.time() < deadline:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=cluster.env(),
                              capture_output=True, text=True)
        state = (done.stdout or done.stderr).strip()
        if done.returncode == 0 and state.startswith("idle"):
            return
        time.sleep(0.5)
    tail = (cluster.state / "slurmctld.log").read_text()[-1500:]
    raise RuntimeError(f"the SLURM node is not idle after {timeout:.0f} s (sinfo: {state!r});"
                       f" slurmctld.log ends:\n{tail}")


if __name__ == "__main__":  # a cluster for benchmarks: prints SLURM_CONF, stops on Ctrl-C
    import sys
    import tempfile

    cluster = start_cluster(Path(sys.argv[1] if len(sys.argv) > 1
                                 else tempfile.mkdtemp(prefix="slurm_")))
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    stop_on = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_on)
    try:
        signal.sigwait(stop_on)
    finally:
        cluster.stop()
