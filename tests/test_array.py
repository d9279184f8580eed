"""Stages as SLURM job arrays on the one-node SLURM (tests/slurm_cluster.py). The vocabulary grid: `cmixtral submit` writes
the stage as `vocab-array` (3 tasks, 2 at once, each training its share of a 6-model grid of the micro config) and the
`vocab` job after it. One task is cancelled before it starts, so SLURM cancels the stage's job (its dependency can no
longer be met); the chain submitted again skips the finished shares' models and gives the grid and the merged
tokenizer of an uninterrupted run in this process. The data stage: the same with its source files as the units."""
import os, shutil, time
from datetime import datetime
from pathlib import Path
import pandas as pd
import pytest
from cmixtral.cluster import chain_status, submit_chain

from vocab_reference import pieces, uninterrupted

ROOT = Path(__file__).resolve().parent.parent
MICRO = ROOT/"configs/micro.yaml"
GRID = ["vocab.workers=1", "vocab.zh_vocab_sizes=[2500,3500,5000]",          # 2 levels x 3 sizes: 6 models
        "cluster.stages.vocab.cpus_per_task=1", "cluster.stages.vocab.array=2", "cluster.stages.vocab.array_tasks=3"]


def settled(slurm, job, timeout=120) -> list[dict]:
    "Wait until every task (or the job) has ended; the records."
    deadline = time.monotonic() + timeout
    while True:
        out = slurm.run("scontrol", "show", "job", "-o", job).stdout
        recs = [slurm.job(l.split()[0].split("=")[1]) for l in out.splitlines() if l.strip()]
        if all(r["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for r in recs):
            return recs
        assert time.monotonic() < deadline, [(r["JobId"], r["JobState"]) for r in recs]
        time.sleep(0.1)


def cancelled_attempt(slurm, run, stage: str, overrides: list, pattern: str) -> dict:
    """Submit STAGE-array and STAGE and cancel the array's third task (held back by %2): the stage's job is cancelled
    by its dependency. The finished units' mtimes."""
    jobs = {r["stage"]: r["job_id"] for r in submit_chain(MICRO, run, stage, overrides)}
    assert list(jobs) == [f"{stage}-array", stage]
    slurm.run("scancel", f"{jobs[f'{stage}-array']}_2")
    settled(slurm, jobs[f"{stage}-array"])
    rec = slurm.wait(int(jobs[stage]), "CANCELLED", timeout=60)
    assert rec["Reason"].startswith("Dependency"), rec
    return {p.name: p.stat().st_mtime_ns for p in (run/stage/"units").glob(pattern)}


def resubmitted_attempt(slurm, run, stage: str, overrides: list, pattern: str, first: dict) -> dict:
    """Submit the chain again: every task and the stage's job complete, and the units finished before are not redone.
    The stage job's record, with its units' mtimes."""
    jobs = {r["stage"]: r["job_id"] for r in submit_chain(MICRO, run, stage, overrides)}
    rec = slurm.wait(int(jobs[stage]), "COMPLETED", timeout=180)
    assert rec["ExitCode"] == "0:0", slurm.log(int(jobs[stage]))[-3000:]
    assert all(r["JobState"] == "COMPLETED" for r in settled(slurm, jobs[f"{stage}-array"]))
    again = {p.name: p.stat().st_mtime_ns for p in (run/stage/"units").glob(pattern)}
    assert all(again[k] == v for k, v in first.items()), (first, again)
    return {**rec, "units": again}


@pytest.fixture
def on_slurm(slurm_login, monkeypatch):
    "A login node of the test SLURM whose jobs import this checkout's cmixtral, quietly."
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("CMIXTRAL_QUIET", "1")
    return slurm_login


def test_a_vocab_grid_array_with_a_cancelled_task_resubmitted_gives_the_uninterrupted_grid(on_slurm, micro_run, tmp_path):
    slurm = on_slurm
    run = tmp_path/"run"                                                       # the micro run's assets stage, copied
    shutil.copytree(micro_run[0]/"assets", run/"assets"); shutil.copy(micro_run[0]/"run.json", run/"run.json")
    first = cancelled_attempt(slurm, run, "vocab", GRID, "grid-*.json")
    assert len(first) == 4 and not (run/"vocab"/"manifest.json").exists(), sorted(first)   # tasks 0 and 1: 2 models each
    assert any(r["state"] == "CANCELLED" for r in chain_status(run))
    rec = resubmitted_attempt(slurm, run, "vocab", GRID, "grid-*.json", first)          # the chain again
    again = rec["units"]
    assert len(again) == 6                                                    # finished shares were not redone
    start = datetime.fromisoformat(rec["StartTime"]).timestamp()              # the notebook trained no model itself
    assert all(t / 1e9 < start + 2 for t in again.values()), (start, again)
    logs = sorted((run/"slurm").glob("*vocab-array-*_*.out"))
    assert len(logs) == 5, logs                                                # a log per task: 2 + 3
    grid, merged = uninterrupted(MICRO, GRID, run, tmp_path/"ref")
    got = pd.read_csv(run/"vocab"/"grid.csv")
    assert (got.status == "trained").sum() == 6
    pd.testing.assert_frame_equal(got.drop(columns="seconds"), grid.drop(columns="seconds"))
    assert pieces(run/"vocab"/"merged.model") == merged
    assert [r["state"] for r in chain_status(run)] == ["COMPLETED", "COMPLETED"]


def test_the_data_stage_as_an_array_of_3_tasks_with_one_cancelled_and_resubmitted_gives_the_same_dataset(on_slurm, micro_run, tmp_path):
    """`cmixtral submit` of the data stage with `cluster.stages.data.array=2, array_tasks=3`: task i encodes the micro
    config's source file i (three corpora). The third task is cancelled, so the stage's job is cancelled too; the chain
    submitted again skips the two finished files and gives the blocks and token report of the micro run's own data
    stage (one process, no array)."""
    import numpy as np
    from datasets import load_from_disk
    slurm = on_slurm
    run, micro = tmp_path/"run", micro_run[0]                                  # the micro run's assets and vocab stages
    for stage in ("assets", "vocab"):
        shutil.copytree(micro/stage, run/stage, symlinks=True)
    shutil.copy(micro/"run.json", run/"run.json")
    arr = ["cluster.stages.data.array=2", "cluster.stages.data.array_tasks=3"]
    first = cancelled_attempt(slurm, run, "data", arr, "*.json")
    assert sorted(first) == ["zh-news_corpora_zh-news_train.jsonl.json", "zh-reviews-pos_corpora_zh-reviews-pos_train.jsonl.json"]
    assert not list(run.rglob("state.json"))                                  # no dataset assembled yet
    rec = resubmitted_attempt(slurm, run, "data", arr, "*.json", first)        # the chain again
    assert len(rec["units"]) == 3                                             # finished files were not redone
    assert (run/"data"/"token_report.csv").read_text() == (micro/"data"/"token_report.csv").read_text()
    for p in sorted(q for q in (micro/"data").rglob("state.json") if "sft" not in q.parts):   # SFT's are its own
        a, b = (load_from_disk(str(r/p.parent.relative_to(micro))).with_format("numpy")[:]["input_ids"] for r in (micro, run))
        assert np.array_equal(a, b), p.parent.name
