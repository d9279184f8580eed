"The micro end-to-end pipeline through the real runner (papermill, the real notebooks, the cmixtral console script)."
import json, shutil, subprocess
from pathlib import Path
import pytest
from cmixtral.core import *
from cmixtral.cluster import list_stages, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
MICRO = ROOT/"configs"/"micro.yaml"

def cmixtral(*args, cwd=ROOT):
    return subprocess.run(["cmixtral", *map(str, args)], capture_output=True, text=True, cwd=cwd)

def test_every_stage_runs_and_writes_its_manifest(micro_run):
    out, r = micro_run
    for stage in list_stages():
        m = json.loads((out/stage/"manifest.json").read_text())
        assert m["stage"] == stage and m["config_name"] == "micro"
        assert m["pipeline"]["fingerprint"]
        for o in m["outputs"].values(): assert (out/o["path"]).exists()
        assert (out/"notebooks"/Path(m["pipeline"]["notebook"]).name).exists()

def test_assets_outputs_load_with_transformers(micro_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out, _ = micro_run
    tok = AutoTokenizer.from_pretrained(out/"assets"/"tokenizer")
    assert tok("我的名字是")["input_ids"] == [1, 28705, 29242, 28914, 29046, 29031, 28971]
    model = AutoModelForCausalLM.from_pretrained(out/"assets"/"base_model")
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_local_experts == 8
    m = read_manifest(out, "assets")
    assert set(m["metrics"]["heldout_bpc"]) == {"zh", "en"}
    held = (out/"assets"/"corpora"/"zh-news"/"heldout.jsonl").read_text().splitlines()
    train = set((out/"assets"/"corpora"/"zh-news"/"train.jsonl").read_text().splitlines())
    assert held and not train & set(held)

def test_second_run_skips_everything(micro_run):
    out, _ = micro_run
    r = cmixtral("pipeline", "--config", MICRO, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [l.split()[:2] for l in r.stdout.strip().splitlines()]
    assert rows == [[stage, "skipped"] for stage in list_stages()], r.stdout

def test_run_dir_of_another_config_is_refused(micro_run):
    out, _ = micro_run
    r = cmixtral("pipeline", "--config", ROOT/"configs"/"tiny.yaml", "--out", out)
    assert r.returncode == 2
    assert r.stderr.strip() == f"cmixtral: error: run directory {out} was made by config 'micro', not 'tiny'; choose another --out"

def test_failure_names_notebook_and_cell_and_loses_nothing(micro_run):
    out, _ = micro_run
    before = (out/"assets"/"manifest.json").read_text()
    r = cmixtral("pipeline", "--config", MICRO, "--out", out, "--stages", "assets", "-p", "assets.base_model.source=bogus")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("cmixtral: error: stage notebook 01_assets.ipynb failed in code cell")
    assert "unknown base_model source 'bogus'" in err
    assert (out/"assets"/"manifest.json").read_text() == before          # the finished run is intact
    assert (out/"assets"/"base_model"/"model.safetensors").exists()

def test_resume_after_failure_starts_at_the_failed_stage(tmp_path, cache):
    "Two stages; the second fails once; the rerun skips the first and finishes the second."
    nbs = tmp_path/"nbs"; nbs.mkdir()
    shutil.copy(ROOT/"nbs"/"01_assets.ipynb", nbs)
    flag = tmp_path/"fail-once"; flag.write_text("x")
    check = {"cells": [
        {"cell_type": "code", "id": "params", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": "config = ''\nrun_dir = ''\noverrides = []"},
        {"cell_type": "code", "id": "work", "metadata": {}, "execution_count": None, "outputs": [], "source":
         "from pathlib import Path\nfrom cmixtral.core import *\n"
         f"flag = Path({str(flag)!r})\n"
         "if flag.exists():\n    flag.unlink(); raise RuntimeError('injected failure')\n"
         "cfg = load_config(config, overrides)\nrun = StageRun(run_dir, 'check', cfg)\n"
         "run.output(Path(run_dir)/'assets'/'tokenizer')\nrun.finish()"}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    (nbs/"02_check.ipynb").write_text(json.dumps(check))
    out = tmp_path/"run"
    with pytest.raises(CmixtralError, match=r"02_check.ipynb failed in code cell 2 .*RuntimeError: injected failure"):
        run_pipeline(MICRO, out, nbs=nbs)
    assert (out/"assets"/"manifest.json").exists() and not (out/"check"/"manifest.json").exists()
    rows = run_pipeline(MICRO, out, nbs=nbs)
    assert [(r["stage"], r["status"]) for r in rows] == [("assets", "skipped"), ("check", "ran")]
