"""Held-out text is held out of every training stage: the vocabulary's corpora, the data stage's files and the SFT
sources never reach a held-out corpus, a codec text or the evaluation's task files (core.heldout_overlaps)."""
import json
from pathlib import Path
import pytest, yaml
from cmixtral.cli import main
from cmixtral.cluster import preflight
from cmixtral.core import CmixtralError, heldout_overlaps, load_config, section

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT/"configs"/"mixtral-8x7b.yaml"
HELD = "data/2023-06_zh_head_0000.jsonl"
LEAK = ": a training stage would see held-out text"


def full() -> dict:
    return yaml.safe_load(FULL.read_text())


def corpus(d: dict, name: str) -> dict:
    return next(c for c in d["assets"]["corpora"] if c["name"] == name)


def fails_with(tmp_path, d: dict, *overrides) -> str:
    "The one-line error of loading `d` (written as a config file), which must fail."
    p = tmp_path/"leak.yaml"
    p.write_text(yaml.safe_dump(d, allow_unicode=True))
    with pytest.raises(CmixtralError) as e:
        load_config(p, list(overrides))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: ")
    return msg[len(f"{p}: "):]


@pytest.mark.parametrize("name", ["mixtral-8x7b.yaml", "rehearsal.yaml", "tiny.yaml", "micro.yaml"])
def test_every_config_holds_its_heldout_text_out_of_training(name):
    cfg = load_config(ROOT/"configs"/name)
    assert heldout_overlaps(dict(cfg)) == []


def test_rehearsal_with_its_test_paths_holds_heldout_out(tmp_path):
    from test_rehearsal import REHEARSAL, rehearsal_overrides
    cfg = load_config(REHEARSAL, [o for o in rehearsal_overrides(tmp_path) if not o.startswith("cluster.slurm.port")])
    assert heldout_overlaps(dict(cfg)) == []


def test_data_glob_against_heldout_corpus(tmp_path):
    d = full()
    del d["data"]["datasets"][1]["exclude"]        # the fix reverted
    del d["codec"]["texts"]                       # so that the held-out corpus is the only held-out file
    assert fails_with(tmp_path, d) == (
        f"data.datasets[SkyPile-150B-2023] files 'data/2023-*.jsonl' of Skywork/SkyPile-150B match held-out file {HELD}"
        f" (assets.corpora[zh-skypile-2023-06]){LEAK}")
    d = full()
    del d["data"]["datasets"][1]["exclude"]        # with the codec text too: the first, and a count of the rest
    assert fails_with(tmp_path, d).endswith(f"(assets.corpora[zh-skypile-2023-06]){LEAK} (and 1 more: cmixtral preflight lists them)")


def test_vocabulary_corpus_against_codec_text(tmp_path):
    d = full()
    corpus(d, "zh-skypile-2023-06")["split"] = "train"
    assert fails_with(tmp_path, d) == (
        f"assets.corpora[zh-skypile-2023-06] file '{HELD}' of Skywork/SkyPile-150B matches held-out file {HELD}"
        f" (codec.texts[zh-skypile-2023-06]){LEAK}")


def test_sft_source_against_eval_task_folder(tmp_path):
    tasks = tmp_path/"data"/"lm-eval-tasks"
    msg = fails_with(tmp_path, full(), f"eval.task_data={tasks}", f"sft.datasets.0.path={tmp_path/'data'}",
                     "sft.datasets.0.files=['**/*.jsonl']")
    assert msg == (f"sft.datasets[ShareGPT-Chinese] files '**/*.jsonl' under {tmp_path/'data'} match held-out folder {tasks}"
                   f" (eval.task_data){LEAK}")
    # beside it, not above it: no overlap
    cfg = load_config(FULL, [f"eval.task_data={tasks}", f"sft.datasets.0.path={tmp_path/'data'/'sft'}"])
    assert heldout_overlaps(dict(cfg)) == []


def test_a_corpus_split_by_position_is_exempt_against_itself_only(tmp_path):
    d = full()
    corpus(d, "zh-skypile-2023-06")["split"] = "both"
    d["codec"]["texts"] = []
    p = tmp_path/"both.yaml"
    p.write_text(yaml.safe_dump(d, allow_unicode=True))
    assert heldout_overlaps(dict(load_config(p))) == []      # vocabulary on its training blocks, figures on the rest
    del d["data"]["datasets"][1]["exclude"]                   # the data stage reads the whole file, held-out blocks too
    assert fails_with(tmp_path, d) == (
        f"data.datasets[SkyPile-150B-2023] files 'data/2023-*.jsonl' of Skywork/SkyPile-150B match the held-out blocks of"
        f" {HELD} (assets.corpora[zh-skypile-2023-06], split: both){LEAK}")
    d = full()
    corpus(d, "zh-skypile-2023-06")["split"] = "both"         # a codec text is measured whole: 95% of it trained on
    assert fails_with(tmp_path, d).startswith(
        f"assets.corpora[zh-skypile-2023-06] file '{HELD}' of Skywork/SkyPile-150B matches held-out file {HELD} (codec")


def test_preflight_reports_an_overlap_as_a_failed_line(tmp_path, capsys):
    run = str(tmp_path/"run")
    ok = [r for r in preflight(FULL, run) if r["check"] == "held-out"]
    assert [r["ok"] for r in ok] == [True]
    rows = [r for r in preflight(FULL, run, ["data.datasets.1.exclude=[]"]) if r["check"] == "held-out"]
    assert [r["ok"] for r in rows] == [False, False]
    assert [r["detail"].split(" (")[-1] for r in rows] == [
        f"assets.corpora[zh-skypile-2023-06]){LEAK}", f"codec.texts[zh-skypile-2023-06]){LEAK}"]
    assert main(["preflight", "--config", str(FULL), "--out", run, "-p", "data.datasets.1.exclude=[]"]) == 1
    out = capsys.readouterr().out
    failed = [l for l in out.splitlines() if " FAILED " in l and "held-out" in l]
    assert len(failed) == 2 and all(f"match held-out file {HELD}" in l for l in failed), out
    assert "Traceback" not in out


def test_the_data_stage_reads_the_rehearsal_files_less_the_heldout_one(tmp_path):
    "The rehearsal's hub files (its test's fixture): every dataset keeps a training file, none of them held out."
    from hub_cache import cache_repo, run_offline
    from test_rehearsal import EN_FILES, REHEARSAL, ZH_FILES
    cache_repo(tmp_path, "Skywork/SkyPile-150B", {f: b'{"text": "x"}\n' for f in ZH_FILES}, "dataset")
    cache_repo(tmp_path, "DKYoon/SlimPajama-6B", {f: b"PAR1" for f in EN_FILES}, "dataset")
    r = run_offline(tmp_path, f"""
import json
from cmixtral.core import load_config, section
from cmixtral.data import DataConfig, source_files
S = section(load_config({str(REHEARSAL)!r}), "data", DataConfig)
print(json.dumps({{s.name: [p.relative_to(p.parents[1]).as_posix() for p in source_files(s, ".")] for s in S.datasets}}))
""")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"SkyPile-150B-2022": ["data/2022-49_zh_head_0000.jsonl"],
                                    "SkyPile-150B-2023": ["data/2023-14_zh_head_0000.jsonl"],
                                    "DKYoon-SlimPajama-6B": [EN_FILES[0]]}
