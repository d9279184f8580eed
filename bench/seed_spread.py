"""How far the trained models' figures move with the training seed: the pretraining arms and the two SFT merges.

    python bench/seed_spread.py [--run runs/tiny] [--config configs/tiny.yaml] [--seeds 0,1,2] [--out bench/out/seed-spread]

For each seed S, a run directory `OUT/seed-S` receives the finished run's assets, vocab, embed_init and data stages
(files over 1 MB hard-linked, the rest copied: nothing upstream is trained again, and nothing written here reaches the
finished run) and runs the pretrain and sft stages through the pipeline itself with `pretrain.train.seed=S` and
`sft.train.seed=S`. The training seed sets the order of the training blocks, the LoRA initialisation and dropout; the
documents each arm reads stay those of the config's `seed`. Then it writes bench/results/seed_spread.csv, one row per
seed and model (every pretraining arm, the `init` arm named with its method, the stored and NF4 base, the SFT merges) with its held-out bits per character
and, for the merges, the largest logit gap to the trained model, and prints each model's mean and range. A seed whose
run directory already holds finished pretrain and sft stages is read, not trained again (delete it to train again).

A benchmark, not a test, and not part of `make run`: about five minutes per seed on 2 idle cores for the tiny config
(pretrain 265 to 289 s and sft 33 to 35 s per seed).
"""
import argparse, csv, os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ("assets", "vocab", "embed_init", "data")


def link_or_copy(src, dst):
    "Hard-link files over 1 MB (models, token blocks), copy the rest (manifests, registries a stage may rewrite)."
    if os.path.getsize(src) > 1 << 20:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def seed_run(run: Path, out: Path) -> Path:
    "A run directory holding `run`'s upstream stages, ready for the pretrain and sft stages."
    out.mkdir(parents=True, exist_ok=True)
    if not (out/"run.json").exists():
        shutil.copy2(run/"run.json", out/"run.json")
    for stage in UPSTREAM:
        if not (out/stage/"manifest.json").exists():
            shutil.rmtree(out/stage, ignore_errors=True)
            shutil.copytree(run/stage, out/stage, copy_function=link_or_copy)
    return out


def rows_of(run: Path, seed: int) -> list[dict]:
    "One row per model of the finished pretrain and sft stages of `run`."
    import json
    pre = json.loads((run/"pretrain"/"manifest.json").read_text())["metrics"]
    sft = json.loads((run/"sft"/"manifest.json").read_text())["metrics"]
    method = json.loads((run/"embed_init"/"manifest.json").read_text())["metrics"]["method"]
    rows = [{"seed": seed, "stage": "pretrain", "model": f"init ({method})" if m == "init" else m,
             "bpc_zh": v["zh"], "bpc_en": v["en"], "max_logit_diff": ""}
            for m, v in pre["heldout_bpc"].items()]
    rows += [{"seed": seed, "stage": "sft", "model": m, "bpc_zh": v["bpc_zh"], "bpc_en": v["bpc_en"],
              "max_logit_diff": v["max_logit_diff"]} for m, v in sft["merges"].items()]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/tiny", help="a finished run of --config (its upstream stages are reused)")
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="bench/out/seed-spread")
    ap.add_argument("--csv", default="bench/results/seed_spread.csv")
    a = ap.parse_args()
    run, out = ROOT/a.run, ROOT/a.out
    for stage in UPSTREAM:
        if not (run/stage/"manifest.json").exists():
            sys.exit(f"seed_spread: {run} has no finished {stage} stage (run the pipeline on {a.config} first)")
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        d = out/f"seed-{seed}"
        if all((d/s/"manifest.json").exists() for s in ("pretrain", "sft")):
            print(f"seed {seed}: finished in {d.relative_to(ROOT)}, read again (delete it to train again)", flush=True)
            rows += rows_of(d, seed)
            continue
        d = seed_run(run, d)
        cmd = [sys.executable, "-m", "cmixtral.cli", "pipeline", "--config", str(ROOT/a.config), "--out", str(d),
               "--stages", "pretrain,sft", "-p", f"pretrain.train.seed={seed}", "-p", f"sft.train.seed={seed}"]
        print(f"seed {seed}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        rows += rows_of(d, seed)
    path = ROOT/a.csv
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    import pandas as pd
    t = pd.read_csv(path)
    summary = t.groupby(["stage", "model"])[["bpc_zh", "bpc_en"]].agg(["mean", "min", "max"]).round(4)
    print(summary.to_string())
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
