"""Wall time of `make install` into an empty venv, step by step, and a check of what it installed.

    python bench/install.py [--keep] [--no-cache] [--lock constraints.txt] [--pipeline configs/tiny.yaml]

Creates a venv in a temporary directory, asks make for the install recipe with PY=<the venv's python>
(`make -n install`), runs those commands one by one from the repository root and times each. Then checks
the venv: every installed package (but pip and cmixtral) at its version in the lock and none outside it;
cmixtral, deepspeed, bitsandbytes, peft and lm_eval import; `cmixtral --help` runs; deepspeed imports
with DS_ACCELERATOR=cpu (these imports after the pipeline when there is one, which then starts from the venv
exactly as `make install` left it). `--no-cache` runs the steps with PIP_NO_CACHE_DIR=1 (nothing from earlier
downloads or builds); `--keep` keeps the venv and prints its path. `--pipeline CONFIG` then runs
`bench/pipeline.py --config CONFIG` with the venv's python and `cmixtral` (a cold cache and a fresh run directory,
`bench/out/fresh-<config>`), and writes the first hour of a fresh machine, install and pipeline, to
`bench/out/fresh.csv`.
A benchmark, not a test: the numbers vary with the machine and the network; the goal is under 3 minutes
on 2 CPU cores with an empty pip cache.
"""
import argparse, csv, os, re, shlex, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--keep", action="store_true", help="keep the venv")
ap.add_argument("--no-cache", action="store_true", help="PIP_NO_CACHE_DIR=1 for the install steps")
ap.add_argument("--lock", default="constraints.txt", help="the lock that `make install` uses")
ap.add_argument("--pipeline", metavar="CONFIG", help="then run the pipeline on CONFIG in the new venv")
a = ap.parse_args()
root = Path(__file__).resolve().parent.parent


def cache_state(env):
    "How much pip's cache holds before the run (a warm cache skips downloads and builds)."
    if env.get("PIP_NO_CACHE_DIR"):
        return "off (PIP_NO_CACHE_DIR)"
    d = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    path = Path(d.stdout.strip() or Path.home()/".cache"/"pip")
    files = [f for f in path.rglob("*") if f.is_file()] if path.exists() else []
    mb = sum(f.stat().st_size for f in files) / 2**20
    return f"{path}, {mb:,.0f} MB in {len(files):,} files before the run"


def install_steps(py):
    "The commands of `make install` with PY=py, as make would run them, one string per command."
    args = ["make", "--no-print-directory", "-n", "install", f"PY={py}", f"LOCK={a.lock}"]
    text = subprocess.run(args, cwd=root, capture_output=True, text=True, check=True).stdout
    return [c.strip() for c in text.replace("\\\n", " ").splitlines() if c.strip()]


def lock_pins(path):
    "name -> version from the lock, names normalised as pip does."
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, version = line.split("==")
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def installed(py):
    "name -> version of every package in the venv but pip and cmixtral, local labels (+cpu) dropped."
    args = [str(py), "-m", "pip", "list", "--format=freeze", "--exclude", "pip", "--exclude", "cmixtral"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    got = {}
    for line in out.splitlines():
        name, version = line.split("==")
        got[re.sub(r"[-_.]+", "-", name).lower()] = version.split("+")[0]
    return got


env = dict(os.environ)
if a.no_cache:
    env["PIP_NO_CACHE_DIR"] = "1"
tmp = Path(tempfile.mkdtemp(prefix="cmixtral-install-"))
venv = tmp/"venv"
py = venv/"bin"/"python"
print(f"pip cache: {cache_state(env)}")
print(f"cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f} (other work skews the times); "
      f"venv: {venv}")
rows = []
t0 = time.time()
subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
rows.append(("create the venv", time.time() - t0))
failed = None
for cmd in install_steps(py):
    print(f"$ {cmd}", flush=True)
    t = time.time()
    r = subprocess.run(cmd, shell=True, cwd=root, env=env)
    rows.append((cmd.replace(str(py), "$PY"), time.time() - t))
    if r.returncode:
        failed = f"exit {r.returncode}: {cmd}"
        break
total = time.time() - t0

checks = []
if not failed:
    pins, got = lock_pins(root/a.lock), installed(py)
    off = sorted(f"{n} {v} (lock: {pins.get(n, 'absent')})" for n, v in got.items() if pins.get(n) != v)
    missing = sorted(n for n in pins if n not in got)
    checks.append(("every package at its lock version, none outside it", not off, "; ".join(off)))
    checks.append(("every package of the lock installed", not missing, ", ".join(missing)))


def probe():
    """Import what the project needs and run its CLI in the venv; one check each. Run after the pipeline when there is
    one, so that the pipeline starts from the venv exactly as `make install` left it, nothing imported ahead of it."""
    probes = [
        ("import cmixtral, deepspeed, bitsandbytes, peft, lm_eval",
         [str(py), "-c", "import cmixtral, deepspeed, bitsandbytes, peft, lm_eval"], {}),
        ("cmixtral --help", [str(venv/"bin"/"cmixtral"), "--help"], {}),
        ("DS_ACCELERATOR=cpu: import deepspeed, accelerator cpu",
         [str(py), "-c", "import deepspeed\nfrom deepspeed.accelerator import get_accelerator\n"
          "assert get_accelerator().device_name() == 'cpu', get_accelerator().device_name()"],
         {"DS_ACCELERATOR": "cpu"}),
    ]
    for name, args, extra in probes:
        t = time.time()
        r = subprocess.run(args, capture_output=True, text=True, cwd=tmp, env={**os.environ, **extra})
        name += f" ({time.time() - t:.0f} s)"
        checks.append((name, r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]))


def report_checks():
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))


print(f"\n{'step':<100} {'wall s':>8}")
for name, seconds in rows:
    shown = name if len(name) <= 100 else name[:97] + "..."
    print(f"{shown:<100} {seconds:>8.1f}")
print(f"{'total':<100} {total:>8.1f}   ({total / 60:.1f} min; goal: under 3 min on 2 cores, cold cache)")
print(f"load average at the end: {os.getloadavg()[0]:.1f}")
if not failed and not a.pipeline:
    probe()
report_checks()


def run_pipeline(config):
    "bench/pipeline.py on `config` with the venv first on PATH; (seconds, the rows of its bench_times.csv)."
    out = root/"bench"/"out"/f"fresh-{Path(config).stem}"
    venv_env = {**os.environ, "PATH": f"{venv/'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    t = time.time()
    r = subprocess.run([str(py), "bench/pipeline.py", "--config", config, "--out", str(out)], cwd=root, env=venv_env)
    if r.returncode:
        sys.exit(f"pipeline failed (exit {r.returncode}) in the fresh venv; its run directory: {out}")
    return time.time() - t, list(csv.DictReader((out/"bench_times.csv").open()))


if a.pipeline and not failed and all(ok for _, ok, _ in checks):
    seconds, stages = run_pipeline(a.pipeline)
    probe()
    report_checks()
    table = [("part", "step", "seconds"), ("install", "total", f"{total:.1f}")]
    table += [("install", name, f"{s:.1f}") for name, s in rows]
    table += [("pipeline", r["stage"], f"{float(r['wall_s']):.1f}") for r in stages]
    table.append(("fresh machine", "install and pipeline", f"{total + seconds:.1f}"))
    path = root/"bench"/"out"/"fresh.csv"
    with open(path.with_suffix(".tmp"), "w", newline="") as f:
        csv.writer(f).writerows(table)
    path.with_suffix(".tmp").rename(path)
    print(f"install {total / 60:.1f} min + pipeline {seconds / 60:.1f} min = {(total + seconds) / 60:.1f} min; "
          f"written {path}")
if a.keep:
    print(f"kept: {venv}  (activate: source {shlex.quote(str(venv/'bin'/'activate'))})")
else:
    shutil.rmtree(tmp, ignore_errors=True)
if failed:
    sys.exit(f"install failed, {failed}")
if not all(ok for _, ok, _ in checks):
    sys.exit(1)
