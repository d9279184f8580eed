"""A notebook stage warned mid-way on the one-node SLURM (tests/slurm_cluster.py): the vocab stage of the micro config
stops at a unit boundary, its job requeues, the second attempt skips the finished units and the stage's outputs are
those of an uninterrupted run. The warning is injected (USR1 to the batch shell) when the first unit is recorded,
rather than waiting for a minute-granular time limit."""
import os, shutil, time
from pathlib import Path
import pandas as pd
import pytest
from cmixtral.cluster import write_sbatch

from vocab_reference import pieces, uninterrupted

ROOT = Path(__file__).resolve().parent.parent
MICRO = ROOT/"configs/micro.yaml"
# more grid models, one at a time, so that the warning lands while units remain
GRID = ["vocab.workers=1", "vocab.zh_vocab_sizes=[2500,3500,4500,6000]"]


def test_a_warned_vocab_stage_requeues_and_gives_the_uninterrupted_outputs(slurm_login, micro_run, tmp_path):
    slurm = slurm_login
    run = tmp_path/"run"                                                       # the micro run's assets stage, copied
    shutil.copytree(micro_run[0]/"assets", run/"assets"); shutil.copy(micro_run[0]/"run.json", run/"run.json")
    job = slurm.submit(write_sbatch(MICRO, "vocab", run_dir=run, overrides=GRID), f"--export=ALL,PYTHONPATH={ROOT},CMIXTRAL_QUIET=1")
    units = run/"vocab"/"units"
    deadline = time.monotonic() + 120
    while not list(units.glob("*.json")):
        assert time.monotonic() < deadline and slurm.state(job) in ("PENDING", "CONFIGURING", "RUNNING"), slurm.log(job)
        time.sleep(0.05)
    slurm.signal_batch(job, "USR1")                                            # SLURM's warning before the time limit
    slurm.wait(job, "PENDING", timeout=120)
    first = {p.name for p in units.glob("*.json")}
    assert not (run/"vocab"/"manifest.json").exists() and len(first) < 2 * 8, sorted(first)
    slurm.release(job)
    rec = slurm.wait(job, "COMPLETED", timeout=120)
    assert rec["Restarts"] == "1" and rec["ExitCode"] == "0:0"
    log = slurm.log(job)
    assert "StageStopped: stage vocab: asked to stop before" in log and "stage vocab stopped at a checkpoint" in log, log[-3000:]
    assert first < {p.name for p in units.glob("*.json")}
    grid, merged = uninterrupted(MICRO, GRID, run, tmp_path/"ref")
    got = pd.read_csv(run/"vocab"/"grid.csv")
    assert (got.status == "trained").sum() == 8
    pd.testing.assert_frame_equal(got.drop(columns="seconds"), grid.drop(columns="seconds"))
    assert pieces(run/"vocab"/"merged.model") == merged
