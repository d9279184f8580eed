"""A notebook stage warned mid-way on the one-node SLURM (tests/slurm_cluster.py): the vocab stage of the micro config
stops at a unit boundary, its job requeues, the second attempt skips the finished units and the stage's outputs are
those of an uninterrupted run. The warning is injected (USR1 to the batch shell) when the first unit is recorded,
rather than waiting for a minute-granular time limit."""
import os, shutil, time
from pathlib import Path
import pandas as pd
import pytest
from cmixtral.cluster import write_sbatch

ROOT = Path(__file__).resolve().parent.parent
MICRO = ROOT/"configs/micro.yaml"
# more grid models, one at a time, so that the warning lands while units remain
GRID = ["vocab.workers=1", "vocab.zh_vocab_sizes=[2500,3000,3500,4000,4500,5000,6000]"]


def pieces(path):
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto(); m.ParseFromString(Path(path).read_bytes())
    return [(p.piece, p.score, p.type) for p in m.pieces]


def uninterrupted(run, out) -> tuple[pd.DataFrame, list]:
    "The vocab stage's grid and merged pieces computed in one go, in this process, from `run`'s assets, into `out`."
    from cmixtral.assets import base_tokenizer_path, corpus_paths
    from cmixtral.core import load_config, section
    from cmixtral.vocab import VocabConfig, choose_vocab, merge_spm, score_grid, train_spm_grid, write_training_text
    cfg = load_config(MICRO, GRID); S = section(cfg, "vocab", VocabConfig)
    text, alp_docs = write_training_text(corpus_paths(run, "zh", "train"), out/"zh_train.txt", S.alp_every, S.alp_max_docs)
    rows = train_spm_grid(text, out/"vocab"/"spm", S, cfg.seed, out)
    base = base_tokenizer_path(run)/"tokenizer.model"
    grid = score_grid(rows, out, alp_docs, base)
    grid.to_csv(out/"grid.csv", index=False)
    chosen, _ = choose_vocab(grid, S.min_added)
    merge_spm(base, out/chosen["model"], out/"merged.model")
    return pd.read_csv(out/"grid.csv"), pieces(out/"merged.model")


def test_a_warned_vocab_stage_requeues_and_gives_the_uninterrupted_outputs(slurm, micro_run, tmp_path, monkeypatch):
    for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("PATH", slurm.env["PATH"])
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
    assert not (run/"vocab"/"manifest.json").exists() and len(first) < 2 * 14, sorted(first)
    slurm.release(job)
    rec = slurm.wait(job, "COMPLETED", timeout=120)
    assert rec["Restarts"] == "1" and rec["ExitCode"] == "0:0"
    log = slurm.log(job)
    assert "StageStopped: stage vocab: asked to stop before" in log and "stage vocab stopped at a checkpoint" in log, log[-3000:]
    assert first < {p.name for p in units.glob("*.json")}
    grid, merged = uninterrupted(run, tmp_path/"ref")
    got = pd.read_csv(run/"vocab"/"grid.csv")
    assert (got.status == "trained").sum() == 14
    pd.testing.assert_frame_equal(got.drop(columns="seconds"), grid.drop(columns="seconds"))
    assert pieces(run/"vocab"/"merged.model") == merged
