"""One pretraining arm with and without the config's `env` (glibc's allocator settings), side by side.

    python bench/process_env.py [--run runs/tiny] [--config configs/tiny.yaml] [--arm normal] [--rounds 1]

Copies the stages pretraining reads (assets, vocab, embed_init, data) of a finished run into a temporary run directory,
then runs `cmixtral pipeline --stages pretrain` with one arm, alternating the config as it is and the config with
`-p env={}`, and prints each round's wall-clock, user and system seconds (the children's resource usage), the arm's
bits per character, and the ratios. The figures must be the same to the last digit: `env` may change how fast a stage
runs, never what it computes. Writes bench/results/process_env.csv. A benchmark, not a test (timings vary with the
machine and what else runs on it; run it on idle cores).
"""
import argparse, csv, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--run", default="runs/tiny", help="a finished run whose assets, vocab, embed_init and data to reuse")
ap.add_argument("--config", default="configs/tiny.yaml")
ap.add_argument("--arm", default="normal")
ap.add_argument("--rounds", type=int, default=1)
ap.add_argument("--out", default=str(ROOT/"bench/results/process_env.csv"))
a = ap.parse_args()
run = Path(a.run)
for s in ("assets", "vocab", "embed_init", "data"):
    if not (run/s/"manifest.json").exists():
        sys.exit(f"{run}: no finished {s} stage ({run/s/'manifest.json'} missing); run the pipeline first")


def one(with_env: bool) -> dict:
    d = Path(tempfile.mkdtemp(prefix="cmixtral-env-"))
    try:
        for s in ("assets", "vocab", "embed_init", "data"):
            shutil.copytree(run/s, d/s)
        for f in ("run.json", "pipeline.json"):
            if (run/f).exists():
                shutil.copy(run/f, d/f)
        args = [sys.executable, "-m", "cmixtral.cli", "pipeline", "--config", a.config, "--out", str(d), "--stages",
                "pretrain", "-p", f"pretrain.arms=[{a.arm}]", "-p", f"pretrain.main_arm={a.arm}"]
        args += [] if with_env else ["-p", "env={}"]
        before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
        subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "CMIXTRAL_QUIET": "1"})
        wall, after = time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = {r[""]: r for r in csv.DictReader(open(d/"pretrain"/"arms.csv"))}
        return {"env": "config" if with_env else "none", "wall_s": round(wall, 1),
                "user_s": round(after.ru_utime - before.ru_utime, 1), "sys_s": round(after.ru_stime - before.ru_stime, 1),
                "bpc_zh": rows[a.arm]["zh"], "bpc_en": rows[a.arm]["en"]}
    finally:
        shutil.rmtree(d, ignore_errors=True)


rows = []
for r in range(a.rounds):
    for with_env in (r % 2 == 0, r % 2 == 1):                      # alternate which goes first
        rows.append({"round": r, **one(with_env)})
        print(rows[-1], flush=True)
out = Path(a.out)
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "w", newline="") as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
mean = lambda env, k: sum(float(r[k]) for r in rows if r["env"] == env) / sum(r["env"] == env for r in rows)
same = len({(r["bpc_zh"], r["bpc_en"]) for r in rows}) == 1
print(f"arm {a.arm}, {a.rounds} round(s), load average {os.getloadavg()[0]:.1f}: wall {mean('none', 'wall_s'):.1f} s "
      f"without env, {mean('config', 'wall_s'):.1f} s with it ({mean('none', 'wall_s') / mean('config', 'wall_s'):.2f}x); "
      f"system time {mean('none', 'sys_s'):.1f} s -> {mean('config', 'sys_s'):.1f} s; figures "
      f"{'identical' if same else 'DIFFERENT'}; written {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
sys.exit(0 if same else 1)
