"""Wall time of the pipeline from a cold cache, stage by stage.

    python bench/pipeline.py --config configs/tiny.yaml [--out bench/out/tiny]

Uses a fresh cache directory and a fresh run directory, runs `cmixtral pipeline`, and prints one row
per stage from the run's manifests (seconds in the stage, and the stage's own timings), then the total.
A benchmark, not a test: the numbers vary with the machine; the goal is the whole tiny pipeline in 20
minutes on 2 CPU cores.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--config", default="configs/tiny.yaml")
ap.add_argument("--out", default=None)
a = ap.parse_args()
root = Path(__file__).resolve().parent.parent
out = Path(a.out or root/"bench"/"out"/Path(a.config).stem)
shutil.rmtree(out, ignore_errors=True)
cache = Path(tempfile.mkdtemp(prefix="cmixtral-cold-cache-"))
env = {**os.environ, "CMIXTRAL_CACHE": str(cache), "CMIXTRAL_QUIET": "1"}
t = time.time()
r = subprocess.run(["cmixtral", "pipeline", "--config", a.config, "--out", str(out)], env=env, cwd=root)
total = time.time() - t
shutil.rmtree(cache, ignore_errors=True)
if r.returncode: sys.exit(r.returncode)
rows = json.loads((out/"pipeline.json").read_text())["stages"]
print(f"\n{'stage':<12} {'wall s':>8}   stage timings (s)")
lines = ["stage,wall_s,timings"]
for row in rows:
    m = json.loads((out/row["stage"]/"manifest.json").read_text())
    inner = ", ".join(f"{k} {v:.0f}" for k, v in m["timings"].items() if k != "total")
    print(f"{row['stage']:<12} {row['seconds']:>8.1f}   {inner}")
    lines.append(f'{row["stage"]},{row["seconds"]},"{inner}"')
print(f"{'total':<12} {total:>8.1f}   (cold cache, {os.cpu_count()} cores; goal: tiny pipeline <= 1200 s)")
lines.append(f"total,{total:.1f},")
(out/"bench_times.csv").write_text("\n".join(lines) + "\n")
print(f"written {out/'bench_times.csv'}")
