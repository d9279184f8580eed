"""What the project relies on from SLURM, proved on a real one-node SLURM (tests/slurm_cluster.py).

Batch jobs and their output files, requeue on a USR1 warning with SLURM_RESTART_COUNT on the next run,
afterok dependencies, and srun + torchrun with gloo inside a batch job.
"""
import os, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
from slurm_cluster import SlurmCluster, free_ports

TORCHRUN = Path(sys.executable).parent/"torchrun"


def script(path:Path, body:str) -> Path:
    "Write an executable bash batch script."
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip("\n"))
    path.chmod(0o755)
    return path


def until(pred, timeout:float=30, what:str="condition"):
    "Poll `pred` until it is true; fail the test after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached after {timeout:.0f} s")
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def no_jobs_left(request):
    "Cancel whatever a test leaves on the session's cluster: a failure must not hold the next test's CPUs."
    yield
    if "slurm" in request.fixturenames:
        request.getfixturevalue("slurm").cancel_all()


def test_batch_job_runs_and_its_output_file_appears(slurm, tmp_path):
    s = script(tmp_path/"hello.sh", 'echo "hello from job $SLURM_JOB_ID on $SLURMD_NODENAME in $PWD"\n')
    job = slurm.submit(s, f"--output={tmp_path}/hello-%j.out", f"--chdir={tmp_path}")
    rec = slurm.wait(job, "COMPLETED")
    assert rec["ExitCode"] == "0:0"
    out = tmp_path/f"hello-{job}.out"
    assert out.read_text() == f"hello from job {job} on {slurm.host} in {tmp_path}\n"
    assert slurm.log(job) == out.read_text()


def test_failing_job_is_failed_with_its_exit_code(slurm, tmp_path):
    s = script(tmp_path/"fail.sh", "echo about to fail\nexit 3\n")
    job = slurm.submit(s, f"--output={tmp_path}/fail-%j.out")
    rec = slurm.wait(job, "FAILED")
    assert rec["ExitCode"] == "3:0"
    assert slurm.log(job) == "about to fail\n"


REQUEUE = """
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
#SBATCH --time=10
n=${SLURM_RESTART_COUNT:-0}
echo "run $n SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-unset}"
echo "$n" > D/run-$n
if [ "$n" -ge 1 ]; then exit 0; fi
requeue() {
  date +%s.%N > D/usr1-$n
  scontrol requeue "$SLURM_JOB_ID"
  echo "$? $(date +%s.%N)" > D/requeued-$n
}
trap requeue USR1
trap 'date +%s.%N > D/term-$n.part; mv D/term-$n.part D/term-$n; exit 143' TERM   # whole, as the test reads it
touch D/ready
# short sleeps: bash runs a trap only between foreground commands
for i in $(seq 600); do sleep 0.1; done
touch D/never-signalled
exit 1
"""


def test_usr1_requeues_and_the_next_run_sees_restart_count_1(slurm, tmp_path):
    s = script(tmp_path/"requeue.sh", REQUEUE.replace("D/", f"{tmp_path}/"))
    job = slurm.submit(s, f"--output={tmp_path}/requeue-%j.out")
    slurm.wait(job, "RUNNING")
    until((tmp_path/"ready").exists, what="USR1 trap set")
    slurm.signal_batch(job, "USR1")
    # the batch shell runs its trap, requeues itself, then SLURM sends it SIGTERM (and SIGKILL after KillWait)
    until((tmp_path/"term-0").exists, what="SIGTERM to the requeued batch shell")
    assert float((tmp_path/"term-0").read_text()) >= float((tmp_path/"usr1-0").read_text())
    # held: it would wait ~2 min by itself (SLURM may show the requeued job PENDING before it sets the Reason)
    rec = slurm.wait(job, "PENDING", timeout=slurm.kill_wait + 30, reason="BeginTime")
    assert rec["Restarts"] == "1"
    assert not (tmp_path/"run-1").exists()
    slurm.release(job)
    rec = slurm.wait(job, "COMPLETED")
    assert rec["Restarts"] == "1" and rec["ExitCode"] == "0:0"
    assert (tmp_path/"run-0").read_text() == "0\n"
    assert (tmp_path/"run-1").read_text() == "1\n"
    assert not (tmp_path/"never-signalled").exists()
    # the next run truncates --output (no --open-mode=append): only the second run's lines are left
    assert slurm.log(job) == "run 1 SLURM_RESTART_COUNT=1\n"


def test_afterok_holds_the_dependent_job_until_the_first_completes(slurm, tmp_path):
    a = script(tmp_path/"a.sh", f"""
        for i in $(seq 300); do [ -e {tmp_path}/go ] && break; sleep 0.1; done
        echo done > {tmp_path}/a.done
        """)
    b = script(tmp_path/"b.sh", f"cat {tmp_path}/a.done\n")
    ja = slurm.submit(a, f"--output={tmp_path}/a-%j.out", "--time=2")
    jb = slurm.submit(b, f"--output={tmp_path}/b-%j.out", f"--dependency=afterok:{ja}")
    slurm.wait(ja, "RUNNING")
    rec = slurm.wait(jb, "PENDING", reason="Dependency")
    assert rec["Dependency"] == f"afterok:{ja}(unfulfilled)"
    assert not (tmp_path/f"b-{jb}.out").exists()
    (tmp_path/"go").touch()
    slurm.wait(ja, "COMPLETED")
    slurm.wait(jb, "COMPLETED")
    assert slurm.log(jb) == "done\n"


def test_afterok_on_a_failed_job_never_runs(slurm, tmp_path):
    a = script(tmp_path/"a.sh", "exit 1\n")
    b = script(tmp_path/"b.sh", f"touch {tmp_path}/b.ran\n")
    ja = slurm.submit(a, f"--output={tmp_path}/a-%j.out")
    jb = slurm.submit(b, f"--output={tmp_path}/b-%j.out", f"--dependency=afterok:{ja}")
    slurm.wait(ja, "FAILED")
    # SLURM keeps B pending for ever (kill_invalid_depend is not set), saying why
    rec = slurm.wait(jb, "PENDING", reason="DependencyNeverSatisfied")
    assert rec["Dependency"] == f"afterok:{ja}(failed)"
    slurm.cancel(jb)
    slurm.wait(jb, "CANCELLED")
    assert not (tmp_path/"b.ran").exists()
    assert not (tmp_path/f"b-{jb}.out").exists()


ALL_REDUCE = """
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
x = torch.tensor([float(rank + 1)])
dist.all_reduce(x)
env = " ".join(f"{k}={os.environ.get(k)}" for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "LOCAL_RANK"))
Path(sys.argv[1], f"rank{rank}").write_text(f"{dist.get_world_size()} {x.item()} {env}\\n")
dist.destroy_process_group()
"""


def test_srun_torchrun_gloo_all_reduce_in_a_batch_job(slurm, tmp_path):
    assert TORCHRUN.exists(), TORCHRUN
    py = tmp_path/"all_reduce.py"
    py.write_text(ALL_REDUCE)
    port, = free_ports(1)
    s = script(tmp_path/"ddp.sh", f"""
        #SBATCH --nodes=1
        #SBATCH --ntasks-per-node=1
        #SBATCH --cpus-per-task=2
        set -euo pipefail
        export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
        export OMP_NUM_THREADS=1
        echo "MASTER_ADDR=$MASTER_ADDR"
        srun --kill-on-bad-exit=1 --ntasks-per-node=1 {TORCHRUN} --nnodes=1 --nproc-per-node 2 \\
          --rdzv-id=$SLURM_JOB_ID --rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:{port} {py} {tmp_path}
        """)
    job = slurm.submit(s, f"--output={tmp_path}/ddp-%j.out")
    slurm.wait(job, "COMPLETED", timeout=120)
    assert slurm.log(job).splitlines()[0] == f"MASTER_ADDR={slurm.host}"
    for rank in (0, 1):
        got = (tmp_path/f"rank{rank}").read_text()
        assert got == f"2 3.0 SLURM_JOB_ID={job} SLURM_STEP_ID=0 LOCAL_RANK={rank}\n"


def test_a_second_cluster_runs_beside_and_stops_cleanly(slurm, tmp_path):
    with SlurmCluster() as other:
        assert other.ports.keys() == slurm.ports.keys()
        assert set(other.ports.values()).isdisjoint(slurm.ports.values())
        s = script(tmp_path/"where.sh", 'echo "$SLURM_CONF"\n')
        job = other.submit(s, f"--output={tmp_path}/where-%j.out")
        other.wait(job, "COMPLETED")
        assert other.log(job) == f"{other.conf}\n"
        pids = list(other.pids.values())
        root = other.dir
    assert not root.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()          # stopped and reaped
    # the session's cluster is untouched
    assert slurm.run("sinfo", "-h", "-N", "-o", "%t").stdout.split() == ["idle", "idle"]   # in cpu and gpu


KEEP_ALIVE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from slurm_cluster import SlurmCluster
c = SlurmCluster().start()
print(c.dir, *c.pids.values(), flush=True)
time.sleep(600)
"""


def test_daemons_die_with_a_killed_test_process(tmp_path):
    cmd = [sys.executable, "-c", KEEP_ALIVE, str(Path(__file__).parent)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().split()
    finally:
        p.kill()
        p.wait()
    assert len(line) == 4, line
    root, *pids = line
    try:
        for pid in pids:
            until(lambda: not Path(f"/proc/{pid}").exists(), timeout=20, what=f"daemon {pid} gone")
    finally:
        subprocess.run(["rm", "-rf", root])      # a SIGKILLed process cannot clean its directory
