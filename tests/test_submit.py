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
def on_cluster(slurm_login):
    "SLURM's commands reach the session's cluster; whatever a test leaves running is cancelled after it."
    yield
    slurm_login.cancel_all()


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


def test_a_failed_job_cancels_the_rest_of_the_chain_and_status_says_why(slurm, tmp_path, capsys):
    "assets fails in its first line (exit 3); SLURM cancels vocab and data (--kill-on-invalid-dep=yes): nothing waits."
    run = tmp_path/"run"
    assert main(["submit", "--config", str(MICRO), "--out", str(run), "--stages", "assets,vocab,data",
                 "-p", 'cluster.stages.assets.setup=["exit 3"]']) == 0
    capsys.readouterr()
    first, *rest = (int(j["job_id"]) for j in json.loads((run/"slurm"/"jobs.json").read_text())["jobs"])
    slurm.wait(first, "FAILED")
    for job in rest:
        rec = slurm.wait(job, "CANCELLED", timeout=30)
        assert rec["Reason"] == "DependencyNeverSatisfied", rec
    assert main(["status", str(run)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [l.split()[:3] for l in out[1:4]] == [["assets", str(first), "FAILED"], ["vocab", str(rest[0]), "CANCELLED"],
                                                 ["data", str(rest[1]), "CANCELLED"]]
    assert "cancelled: dependency failed" in out[2] and "cancelled: dependency failed" in out[3]
    assert out[-1] == (f"stage assets (job {first}) ended FAILED, exit code 3:0 (NonZeroExitCode); "
                       "2 later job(s) cancelled: dependency failed")
    assert not slurm.run("squeue", "-h", "-o", "%i").stdout.split()      # no job of the chain left pending


def test_the_full_config_books_gpus_only_for_the_gpu_stages(tmp_path, monkeypatch):
    """`submit` of configs/mixtral-8x7b.yaml on a SLURM whose one node declares a GPU node's resources (128 CPUs,
    2 TB, 8 GPUs as gres; tests/slurm_cluster.py), drained so that no job runs: each job's partition and GPUs as SLURM booked
    them. The config's four training nodes become one (-p cluster.slurm.nodes=1): the test SLURM has one node."""
    from slurm_cluster import SlurmCluster
    from cmixtral.cluster import STAGE_GPU_WORK
    with SlurmCluster(cpus=128, memory_mb=2_000_000, gpus=8, declared=True) as big:
        monkeypatch.setenv("SLURM_CONF", str(big.conf))
        big.run("scontrol", "update", f"nodename={big.host}", "state=drain", "reason=bookings only")  # none runs
        jobs = submit_chain(ROOT/"configs/mixtral-8x7b.yaml", tmp_path/"run", overrides=["cluster.slurm.nodes=1"])
        recs = {j["stage"]: big.job(j["job_id"]) for j in jobs}
    booked = {name: (r["Partition"], r.get("TresPerNode") or "", r["NumNodes"].split("-")[0]) for name, r in recs.items()}
    assert all(r["JobState"] == "PENDING" for r in recs.values()), {n: (r["JobState"], r["Reason"]) for n, r in recs.items()}
    names = [j["stage"] for j in jobs]
    assert names[:6] == ["assets", "vocab-array", "vocab", "embed_init", "data-array", "data"] and names[-2:] == ["eval", "codec"]
    assert (recs["vocab-array"]["ArrayTaskId"], recs["vocab-array"]["ArrayTaskThrottle"]) == ("0-16%8", "8")   # the grid's array
    assert (recs["data-array"]["ArrayTaskId"], recs["data-array"]["ArrayTaskThrottle"]) == ("0-7%8", "8")      # the files' array
    for name in names:
        stage, _, part = name.partition("-")
        gpu = bool(STAGE_GPU_WORK[stage]) and part != "prepare"
        assert booked[name] == (("gpu", "gres:gpu:8", "1") if gpu else ("cpu", "", "1")), (name, booked[name])
    assert {"pretrain-release", "sft", "sft-release"} <= set(names)
    assert booked["vocab"] == ("cpu", "", "1") and "cpu=128" in recs["vocab"]["TRES"]
    assert "mem=64G" in recs["codec"]["TRES"] and "mem=256G" in recs["data"]["TRES"]
