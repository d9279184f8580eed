"""Peak memory of the data stage against corpus size, under a limited address space.

    python bench/data_memory.py [--run runs/tiny] [--stage assets] [--sizes-mb 50 200] [--limit-gb 2]

For each size, generates a jsonl corpus of that many MB (the run's assets corpora repeated, each copy
numbered), then runs split (999:1) + parallel tokenisation + packing in a child process whose address
space is limited with RLIMIT_AS (inherited by its tokeniser processes), and prints the peak RSS of the
main process and of the largest worker. Flat figures across sizes mean memory does not grow with the
corpus. A benchmark, not a test.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r'''
import os, resource, sys, time
from pathlib import Path
from cmixtral.data import DataSource, prepare_text, encode_files, dataset_paths, registry_entry
if __name__ == "__main__":
    corpus, run, tok_dir = map(Path, sys.argv[1:4])
    t = time.time()
    src = DataSource("big", "path", path=str(corpus.parent), files=[corpus.name])
    r = prepare_text(src, run, (999, 1))
    reg = {"big": registry_entry(src)}
    rows = encode_files([dataset_paths(run, "big", s, reg) for s in ("train", "dev")], tok_dir, 256, "document", 2, chunk_mb=8)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"RESULT {self_kb} {kids_kb} {time.time() - t:.1f} {rows[0]['tokens']} {rows[0]['blocks']}")
'''

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/tiny"); ap.add_argument("--stage", default="assets")
ap.add_argument("--sizes-mb", type=float, nargs="+", default=[50, 200]); ap.add_argument("--limit-gb", type=float, default=2)
a = ap.parse_args()

if __name__ == "__main__":
    from cmixtral.assets import corpus_paths
    from cmixtral.data import tokenizer_dir
    tok_dir = tokenizer_dir(a.run, a.stage)
    src = [json.loads(l)["text"] for p in corpus_paths(a.run, None, "train") for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
    limit = int(a.limit_gb * 2**30)
    print(f"address-space limit (RLIMIT_AS) per process: {a.limit_gb} GB; tokenizer {tok_dir}")
    print(f"{'corpus MB':>10} {'main peak RSS MB':>17} {'worker peak RSS MB':>19} {'seconds':>8} {'tokens':>13}")
    for mb in a.sizes_mb:
        tmp = Path(tempfile.mkdtemp(prefix="cmx-mem-"))
        corpus, size, i = tmp/"src"/"big.jsonl", 0, 0
        corpus.parent.mkdir()
        with open(corpus, "w", encoding="utf-8") as f:
            while size < mb * 2**20:
                line = json.dumps({"text": f"{i} {src[i % len(src)]}"}, ensure_ascii=False) + "\n"
                f.write(line); size += len(line.encode()); i += 1
        env = {**os.environ, "CMIXTRAL_QUIET": "1"}
        r = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(tmp/"run"), str(tok_dir)], capture_output=True, text=True, env=env,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
        if r.returncode or not line: print(f"{mb:>10.0f} failed: {r.stderr.strip().splitlines()[-1:]}"); continue
        s_kb, k_kb, secs, toks, blocks = line[0].split()[1:]
        print(f"{size / 2**20:>10.0f} {int(s_kb) / 1024:>17.0f} {int(k_kb) / 1024:>19.0f} {float(secs):>8.1f} {int(toks):>13,}")
        import shutil; shutil.rmtree(tmp)
