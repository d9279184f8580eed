"""`cmixtral submit` and `cancel`, and the stop-file requeue, on a real one-node SLURM (tests/slurm_cluster.py);
a whole chain, with `status`, runs in tests/test_rehearsal.py.

The library calls find sbatch, scontrol and scancel on PATH and the cluster by SLURM_CONF, as on a login node:
each test points both at the session's cluster."""
import json, os, sys, time
from pathlib import Path
import pytest
from cmixtral.cli import main
from cmixtral.cluster import SlurmConfig, cancel_chain, chain_status, list_stages, sbatch_script, submit_chain

ROOT = Path(__file__).resolve().parent.parent
MICRO = ROOT/"configs/micro.yaml"


@pytest.fixture(autouse=True)
def on_cluster(slurm, monkeypatch):
    "SLURM's commands reach the session's cluster; whatever a test leaves running is cancelled after it."
    for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    yield
    slurm.cancel_all()


def until(pred, timeout:float=30, what:str="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached after {timeout:.0f} s")
        time.sleep(0.1)


def test_cancel_clears_the_chain_and_its_pending_dependant(slurm, tmp_path, capsys):
    run = tmp_path/"run"
    assert main(["submit", "--config", str(MICRO), "--out", str(run), "--stages", "assets,vocab"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["stage", "job_id", "script"] and [l.split()[0] for l in table[1:]] == ["assets", "vocab"]
    first, second = (int(j["job_id"]) for j in json.loads((run/"slurm"/"jobs.json").read_text())["jobs"])
    rec = slurm.wait(second, "PENDING", reason="Dependency")
    assert rec["Dependency"] == f"afterok:{first}(unfulfilled)"
    assert main(["cancel", str(run)]) == 0
    assert capsys.readouterr().out == f"cancelled {first} {second}\n"
    slurm.wait(first, "CANCELLED")
    slurm.wait(second, "CANCELLED")
    assert [r["state"] for r in chain_status(run)] == ["CANCELLED", "CANCELLED"]
    assert not (run/"vocab"/"manifest.json").exists()


WORKER = """
import os, sys, time
from pathlib import Path
stop = Path(os.environ["CMIXTRAL_STOP_FILE"])
run = os.environ.get("SLURM_RESTART_COUNT", "0")
print(f"worker run {run} started", flush=True)
Path(sys.argv[1], f"ready-{run}").touch()
if run != "0":
    print("worker resumed from its checkpoint and finished", flush=True)
    sys.exit(0)
for _ in range(600):
    if stop.exists():
        print(f"worker saw {stop.name} ({stop.read_text().strip()}): checkpoint saved, exiting 0", flush=True)
        sys.exit(0)
    time.sleep(0.1)
sys.exit(1)
"""


def job_script(tmp_path, run, step:str) -> Path:
    "The assets stage's real script for `run`, with its launch step replaced by `step`."
    S = SlurmConfig(cpus_per_task=1, mem="1G", time="00:05:00", requeue=True, signal_seconds=60)
    txt = sbatch_script("assets", list_stages()["assets"], S, MICRO, run)
    launch = [l for l in txt.splitlines() if l.startswith("step ")]
    assert len(launch) == 1 and "-m cmixtral.cli pipeline" in launch[0]
    (run/"slurm").mkdir(parents=True, exist_ok=True)
    p = tmp_path/"job.sbatch"
    p.write_text(txt.replace(launch[0], f"step {step} || status=$?"))
    return p


def test_usr1_writes_the_stop_file_the_stage_stops_and_the_job_requeues(slurm, tmp_path):
    run = tmp_path/"run"
    (tmp_path/"worker.py").write_text(WORKER)
    job = slurm.submit(job_script(tmp_path, run, f"{sys.executable} {tmp_path/'worker.py'} {tmp_path}"))
    slurm.wait(job, "RUNNING")
    until((tmp_path/"ready-0").exists, what="worker started")
    slurm.signal_batch(job, "USR1")                       # what --signal=B:USR1@60 sends near the time limit
    rec = slurm.wait(job, "PENDING", timeout=slurm.kill_wait + 30)
    assert rec["Restarts"] == "1" and not (run/"slurm"/f"stop-{job}").exists()
    slurm.release(job)
    rec = slurm.wait(job, "COMPLETED", timeout=60)
    assert rec["Restarts"] == "1" and rec["ExitCode"] == "0:0"
    log = slurm.log(job)
    want = [f"cmixtral: stage assets, job {job}, run 0, ", "worker run 0 started",
            f"cmixtral: USR1: asked the stage to save a checkpoint and stop ({run}/slurm/stop-{job})",
            f"worker saw stop-{job} (USR1 ",
            f"cmixtral: stage assets stopped at a checkpoint (status 0); requeueing job {job}",
            f"cmixtral: stage assets, job {job}, run 1, ", "worker run 1 started",
            "worker resumed from its checkpoint and finished"]
    lines = log.splitlines()
    at = [next((i for i, l in enumerate(lines) if l.startswith(w)), None) for w in want]
    assert None not in at and at == sorted(at), log      # both runs, in order, in one log (--open-mode=append)


def test_a_failed_step_fails_the_job_with_its_status(slurm, tmp_path):
    run = tmp_path/"run"
    job = slurm.submit(job_script(tmp_path, run, "sh -c 'echo failing; exit 3'"))
    rec = slurm.wait(job, "FAILED")
    assert rec["ExitCode"] == "3:0" and rec["Restarts"] == "0"
    assert "failing" in slurm.log(job) and "requeueing" not in slurm.log(job)
