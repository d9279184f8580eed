"""A real one-node SLURM for the tests: Debian's slurm-wlm and munge, in a private temporary directory.

Everything a cluster writes lives under its own directory (slurm.conf, state, spool, pid and log files,
a private munged with its own key and socket), and its ports are chosen free at start, so two test
sessions on one machine do not collide. The daemons run in the foreground as children of the test
process, are stopped by pid, and carry PR_SET_PDEATHSIG so that they die with the test process even
if it is killed outright.

    with SlurmCluster() as c:
        job = c.submit(script, "--output=/tmp/x-%j.out")
        c.wait(job, "COMPLETED")

The node is in two partitions, `cpu` (the default) and `gpu`, as a cluster's CPU and GPU nodes are, and declares
`gpus` GPUs (gres `gpu`, whose device files are links to /dev/null): a job that asks for GPUs is accepted and
booked as on a GPU cluster, and must never run (submit it held). `declared=True` makes slurmd take the node's
CPUs and memory from the configuration instead of the machine (`SlurmdParameters=config_overrides`), so that a
full-scale job's request (128 CPUs, a node's memory) is accepted and booked, held, on this machine.
"""
import atexit, ctypes, os, shutil, signal, socket, subprocess, tempfile, time
from datetime import datetime
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
SBIN = ("/usr/sbin", "/sbin")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
PR_SET_PDEATHSIG = 1


def which(name:str) -> str|None:
    "Path of the program `name`, also looking in the sbin directories a plain user's PATH may lack."
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(name, path=path)


def ensure_installed():
    "Install Debian's slurm-wlm and munge (as `make deps` does) if slurmctld or munged is absent."
    if which("slurmctld") and which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip().splitlines()[-1:]}")


def free_ports(n:int) -> list[int]:
    "`n` distinct TCP ports that are free now (bound together, then released)."
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def traversable_tmp() -> str:
    "The temp directory, or /tmp if a directory above it is closed to others (munged refuses a socket there)."
    base = Path(tempfile.gettempdir()).resolve()
    closed = [d for d in (base, *base.parents) if not d.stat().st_mode & 0o001]
    return "/tmp" if closed else str(base)


def _die_with_parent():
    "Run in the child before exec: ask the kernel to send SIGTERM when the test process goes away."
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def parse_record(text:str) -> dict:
    "`scontrol show job -o` output as a dict, read as the cluster commands read it."
    from cmixtral.cluster import parse_scontrol_record
    return parse_scontrol_record(text)


def tail(path:Path, n:int=15) -> str:
    "The last `n` lines of a log file, or a note that it is absent."
    if not path.exists():
        return f"({path.name} absent)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _write(path:Path, text:str, mode:int=0o644):
    "Write `text` to a temp name beside `path`, then rename it into place."
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class SlurmCluster:
    "One slurmctld + one slurmd (+ a private munged) on this machine, in a temporary directory of their own."

    def __init__(self,
                 kill_wait:int=2,   # seconds from SIGTERM to SIGKILL when a job ends (SLURM's default: 30)
                 cpus:int|None=None,  # CPUs of the node (default: os.cpu_count(), what slurmd finds)
                 start_timeout:float=60,
                 gpus:int=8,        # GPUs (gres gpu) the node declares; jobs that ask for them must be held
                 memory_mb:int|None=None,  # the node's memory (default: what slurmd measures)
                 declared:bool=False):  # trust the configured CPUs and memory over the machine's
        self.kill_wait = kill_wait
        self.cpus = cpus or os.cpu_count()
        self.gpus, self.memory_mb, self.declared = gpus, memory_mb, declared
        self.start_timeout = start_timeout
        self.host = socket.gethostname().split(".")[0]
        self.dir = None
        self.procs = {}
        self.logs = {}
        self.conf = None
        self.env = None
        self.startup_seconds = None

    # --- life cycle ---------------------------------------------------------------------------------------
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> "SlurmCluster":
        "Install if needed, write the configuration, start munged, slurmctld, slurmd; wait for an idle node."
        t0 = time.monotonic()
        ensure_installed()
        self.dir = Path(tempfile.mkdtemp(prefix="cmixtral-slurm-", dir=traversable_tmp()))
        atexit.register(self.stop)
        try:
            self.dir.chmod(0o755)     # munged insists that everyone may traverse its socket's directory
            self._start_munged()
            self.conf = self._write_conf()
            self.env = self._client_env()
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf)])
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self):
        "Cancel this cluster's jobs, stop the daemons it started (by pid), remove its directory. Idempotent."
        if self.dir is None:
            return
        if "slurmctld" in self.procs and self.alive("slurmctld"):
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for f in self.logs.values():
            f.close()
        self.procs = {}
        self.logs = {}
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        atexit.unregister(self.stop)

    def alive(self, name:str) -> bool:
        "Is the daemon `name` (munged, slurmctld, slurmd) that this cluster started still running?"
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    @property
    def pids(self) -> dict[str, int]:
        return {k: p.pid for k, p in self.procs.items()}

    # --- the pieces of start() ---------------------------------------------------------------------------
    def _spawn(self, name:str, cmd:list[str]):
        self.logs[name] = open(self.dir/f"{name}.stderr", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logs[name],
                                            stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True,
                                            preexec_fn=_die_with_parent)

    def _start_munged(self):
        "A munged of our own (own key, socket, pid, log): nobody else's munged is started, shared or stopped."
        m = self.dir/"munge"
        m.mkdir(mode=0o755)
        key = m/"munge.key"
        _write(key, os.urandom(128).hex(), mode=0o600)
        self.munge_socket = m/"munge.socket"
        self._spawn("munged", [which("munged"), "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--log-file={m/'munged.log'}", f"--pid-file={m/'munged.pid'}",
                               f"--seed-file={m/'munged.seed'}"])
        munge = which("munge")
        deadline = time.monotonic() + self.start_timeout
        while True:
            r = subprocess.run([munge, "-n", "-S", str(self.munge_socket)], capture_output=True)
            if r.returncode == 0:
                return
            if not self.alive("munged") or time.monotonic() > deadline:
                logs = f"{tail(m/'munged.log')}\n{tail(self.dir/'munged.stderr')}"
                raise RuntimeError(f"munged did not start:\n{logs}")
            time.sleep(0.05)

    def _real_memory(self) -> int:
        "The node's memory in MB as slurmd measures it (a job's --mem is checked against it)."
        out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True).stdout
        rec = parse_record(out)
        return int(rec.get("RealMemory", "1"))

    def _write_conf(self) -> Path:
        ctld_port, slurmd_port = free_ports(2)
        self.ports = {"slurmctld": ctld_port, "slurmd": slurmd_port}
        d = self.dir
        for sub in ("state", "spool"):
            (d/sub).mkdir()
        _write(d/"plugstack.conf", "")                   # no SPANK plugins from /etc/slurm
        lines = [
            "ClusterName=cmixtral",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d/'state'}",
            f"SlurmdSpoolDir={d/'spool'}",
            f"SlurmctldPidFile={d/'slurmctld.pid'}",
            f"SlurmdPidFile={d/'slurmd.pid'}",
            f"SlurmctldLogFile={d/'slurmctld.log'}",
            f"SlurmdLogFile={d/'slurmd.log'}",
            f"PlugStackConfig={d/'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",    # schedule a new job at once (default: within 3 s)
            "JobRequeue=1",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            f"KillWait={self.kill_wait}",
            "MinJobAge=3600",                              # keep finished jobs visible to scontrol for an hour
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.memory_mb or self._real_memory()}" + (f" Gres=gpu:{self.gpus}" if self.gpus else "")
            + " State=UNKNOWN",
            f"PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP",
        ]
        if self.gpus:                                      # device files that exist: links to /dev/null
            (d/"dev").mkdir()
            for i in range(self.gpus):
                (d/"dev"/f"gpu{i}").symlink_to("/dev/null")
            _write(d/"gres.conf", f"AutoDetect=off\nName=gpu File={d/'dev'}/gpu[0-{self.gpus - 1}]\n")
            lines.append("GresTypes=gpu")
        if self.declared:
            lines.append("SlurmdParameters=config_overrides")
        conf = d/"slurm.conf"
        _write(conf, "\n".join(lines) + "\n")
        return conf

    def _client_env(self) -> dict:
        "os.environ with SLURM_CONF pointing here and no SLURM_/SBATCH_/SRUN_ inputs from an enclosing job."
        drop = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
        return env

    def _wait_idle(self):
        deadline = time.monotonic() + self.start_timeout
        while True:
            r = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
            if r.returncode == 0 and set(r.stdout.split()) == {"idle"}:   # one line per partition
                return
            dead = [n for n in ("munged", "slurmctld", "slurmd") if not self.alive(n)]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not idle after {self.start_timeout:.0f} s"
                raise RuntimeError(f"SLURM did not start ({why}; sinfo: {(r.stdout + r.stderr).strip()!r}):\n"
                                   f"{tail(self.dir/'slurmctld.log')}\n{tail(self.dir/'slurmd.log')}")
            time.sleep(0.05)

    def cancel_all(self):
        "Cancel every job of this cluster and give them KillWait (plus a margin) to leave the node."
        ids = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if not ids:
            return
        self.run("scancel", *ids, check=False)
        deadline = time.monotonic() + self.kill_wait + 15
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
                return
            time.sleep(0.2)

    # --- using it -----------------------------------------------------------------------------------------
    def run(self, *cmd, check:bool=True) -> subprocess.CompletedProcess:
        "Run a SLURM client command against this cluster; a failure raises with its one-line error."
        r = subprocess.run([str(c) for c in cmd], env=self.env, capture_output=True, text=True)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd))}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def submit(self, script, *options) -> int:
        "sbatch `script` with sbatch `options` ('--output=x-%j.out', '--dependency=afterok:3'); the job id."
        out = self.run("sbatch", "--parsable", *options, script).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id:int) -> dict:
        "Everything `scontrol show job` knows about `job_id` (JobState, Reason, Restarts, StdOut ...)."
        return parse_record(self.run("scontrol", "show", "job", "-o", job_id).stdout)

    def state(self, job_id:int) -> str:
        "The job's state: PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED ..."
        return self.job(job_id)["JobState"]

    def wait(self, job_id:int, states, timeout:float=30, reason:str|None=None) -> dict:
        "Poll until the job is in one of `states` (and, if given, has this Reason); return its record."
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            rec = self.job(job_id)
            if rec["JobState"] in states and (reason is None or rec.get("Reason") == reason):
                return rec
            ended = rec["JobState"] in TERMINAL
            if ended or time.monotonic() > deadline:
                want = "/".join(sorted(states)) + (f" with Reason={reason}" if reason else "")
                why = "it ended" if ended else f"after {timeout:.0f} s"
                raise TimeoutError(f"job {job_id} is {rec['JobState']} (Reason={rec.get('Reason')}), "
                                   f"not {want} ({why}); log:\n{self.log(job_id)[-2000:]}")
            time.sleep(0.1)

    def signal_batch(self, job_id:int, sig:str="USR1"):
        "Send `sig` to the batch shell of the job only (what --signal=B:SIG@N does near the time limit)."
        self.run("scancel", f"--signal={sig}", "--batch", job_id)

    def release(self, job_id:int):
        """Let a job held on BeginTime (as a requeued job is) start now, not in the second it was requeued.

        slurmd refuses a credential issued no later than the second its previous run's was revoked
        (`ctime <= revoked`, in whole seconds), and SLURM then fails the job ("Job credential revoked");
        SLURM's own hold of a requeued job (cred_expire + 1 s, 121 s by default) exists to avoid that."""
        requeued = datetime.fromisoformat(self.job(job_id)["SubmitTime"]).timestamp()
        time.sleep(max(0.0, requeued + 1.1 - time.time()))
        self.run("scontrol", "update", f"jobid={job_id}", "starttime=now")

    def requeue(self, job_id:int):
        self.run("scontrol", "requeue", job_id)

    def cancel(self, job_id:int):
        self.run("scancel", job_id)

    def log(self, job_id:int) -> str:
        "The job's --output file (its StdOut), or '' if SLURM has not created it."
        path = self.job(job_id).get("StdOut")
        if not path or not Path(path).exists():
            return ""
        return Path(path).read_text(errors="replace")
