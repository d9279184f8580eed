"""Encoding throughput of our merged tokenizer against Mixtral's, side by side in one process.

    python bench/codec_throughput.py [--run runs/tiny] [--repeats 7] [--threads 0]

Both are HF fast (Rust) tokenizers read from the run directory (vocab/tokenizer and assets/tokenizer).
Each repeat encodes the whole held-out Chinese text, then the whole English text, with one tokenizer
and then the other (the order alternates between repeats), so that both see the same load on the
machine; the median MB/s over repeats is reported with the ratio Mixtral's MB/s / ours, which the codec stage
checks against 1.5 (its manifest's `criteria.throughput_within_1.5x`).
A benchmark, not a test: the numbers depend on the machine and on what else runs on it.
"""
import argparse, os, statistics, time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/tiny", help="run directory with the assets and vocab stages done")
ap.add_argument("--repeats", type=int, default=7)
ap.add_argument("--threads", type=int, default=0, help="RAYON_NUM_THREADS for tokenizers (0: the library's default)")
a = ap.parse_args()
if a.threads: os.environ["RAYON_NUM_THREADS"] = str(a.threads)

from transformers import AutoTokenizer
from cmixtral.assets import base_tokenizer_path, load_texts
from cmixtral.core import read_manifest

run = Path(a.run)
read_manifest(run, "vocab")
toks = {"Mixtral": AutoTokenizer.from_pretrained(str(base_tokenizer_path(run))),
        "ours": AutoTokenizer.from_pretrained(str(run/"vocab"/"tokenizer"))}
texts = {lang: load_texts(run, lang, "heldout") for lang in ("zh", "en")}
mb = {lang: sum(len(d.encode()) for d in docs) / 1e6 for lang, docs in texts.items()}
speed = {(n, l): [] for n in toks for l in texts}
for r in range(a.repeats):
    for n in (list(toks) if r % 2 == 0 else list(toks)[::-1]):
        for l, docs in texts.items():
            t = time.perf_counter(); toks[n](docs, add_special_tokens=False); dt = time.perf_counter() - t
            speed[n, l].append(mb[l] / dt)
print(f"{os.cpu_count()} cores, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}, {a.repeats} repeats, median MB/s")
print(f"{'text':<6} {'MB':>6} {'Mixtral':>9} {'ours':>9} {'Mixtral/ours':>13}")
for l in texts:
    m, o = statistics.median(speed["Mixtral", l]), statistics.median(speed["ours", l])
    print(f"{l:<6} {mb[l]:>6.3f} {m:>9.2f} {o:>9.2f} {m / o:>13.2f}")
