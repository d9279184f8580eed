"""The whole data stage (read, split, tokenise, pack, write) against the `tokenizers` batch encoder on the same text.

    python bench/data_throughput.py [--run runs/tiny] [--stage vocab] [--mb 120] [--num-proc 2] [--repeats 3]
    python bench/data_throughput.py --scaling 10,30,100,300 [--limit-gb 0]

Builds a corpus of about `--mb` MB of JSON lines as `--files` files (like a hub dataset's shards) from the run's
assets corpora (train slices, Chinese and English; the documents repeated, each pass in a new shuffled order), and
times on the same text and the same `--num-proc` cores:
  stage   cmixtral.data.encode_sources from those files to the assembled datasets (listing and checksumming the
          files, reading the JSON lines, splitting by position, tokenising in spawned processes, packing, writing
          the blocks, assembling train and dev), a fresh run directory each time
  direct  a pool of `--num-proc` processes, each calling Tokenizer.encode_batch_fast (and, unless
          --no-encode-batch, encode_batch) on its share of the documents, 512 at a time; the texts are already in
          memory (not read from the files, as in this benchmark before), the pool started and a fresh tokenizer
          loaded in each process before its clock starts (wall: first start to last end)
in `--repeats` interleaved rounds, printing the median times and the ratio stage/direct, and writing the rounds to
bench/results/data_throughput.csv. Below 0.9x (or with --profile) it prints where the stage's time goes: the
parent's phases, the start-up of its worker pool, and a cProfile of one worker's `encode_item`.

--scaling runs the stage alone at each size, each in a fresh child process, and writes seconds per MB and peak RSS
(VmHWM of the child, which includes its imports, with its value after the imports, and of its largest worker,
polled from /proc every 0.1 s; getrusage's ru_maxrss would carry the parent's RSS over the child's fork) to
bench/results/data_scaling.csv; --limit-gb caps every process's address space (RLIMIT_AS) to show memory does
not grow with the corpus. A benchmark, not a test; not part of `make run`.
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
_TEXTS, _TOK = [], {}  # the direct contender's texts (inherited by its forked pool) and tokenizer


def rel(p) -> str:
    "A path relative to the checkout when it lies inside it (the results hold no absolute paths)."
    p = Path(p).resolve()
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else p.name


def build_corpus(run, mb: float, n_files: int, folder: Path, keep_texts: bool, seed: int = 0):
    """Write about `mb` MB of JSON lines as `n_files` files in `folder` from the run's train corpora, repeated in a
    new shuffled order each pass; (bytes, documents, texts written or [])."""
    import numpy as np

    from cmixtral.assets import corpus_paths

    docs = [
        json.loads(line)["text"]
        for p in corpus_paths(run, None, "train")
        for line in p.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    # the stage skips empty texts: keep both contenders on the same documents
    docs = [t for t in docs if t.strip()]
    lines = [(json.dumps({"text": t}, ensure_ascii=False) + "\n").encode() for t in docs]
    folder.mkdir(parents=True, exist_ok=True)
    rng, total, n, texts, k = np.random.default_rng(seed), 0, 0, [], 0
    target, order = mb * 2**20, []
    with ExitStack() as st:
        fs = [
            st.enter_context(open(folder / f"part-{i:05d}-of-{n_files:05d}.jsonl", "wb"))
            for i in range(n_files)
        ]
        while total < target:
            if not order:
                order = list(rng.permutation(len(lines)))
            i = order.pop()
            k = min(n_files - 1, int(total * n_files / target))  # contiguous runs of documents per file
            fs[k].write(lines[i])
            total, n = total + len(lines[i]), n + 1
            if keep_texts:
                texts.append(docs[i])
    return total, n, texts


def stage_config(a):
    from cmixtral.data import DataConfig, DataSource

    src = DataSource("bench", "path", path="", files=["*.jsonl"])
    return src, DataConfig(
        datasets=[src],
        block_size=a.block_size,
        num_proc=a.num_proc,
        chunk_mb=a.chunk_mb,
        batch_docs=a.batch_docs,
    )


def cpu_seconds() -> float:
    "CPU seconds (user and system) of this process and of its children waited for so far."
    return sum(
        x.ru_utime + x.ru_stime
        for x in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def run_stage(a, src_dir, run_dir, tok_dir) -> tuple[float, dict]:
    """Seconds of encode_sources from the files in `src_dir` to the assembled dataset, and its summed counts with
    `cpu`: the CPU seconds of this process and of the stage's worker processes (reaped when its pool closes)."""
    from cmixtral.data import encode_sources

    src, S = stage_config(a)
    src.path = str(src_dir)
    c, t = cpu_seconds(), time.perf_counter()
    out = encode_sources([src], run_dir, tok_dir, S)
    secs, cpu = time.perf_counter() - t, cpu_seconds() - c
    rows = out["rows"]
    return secs, {**{k: sum(r[k] for r in rows) for k in ("docs", "tokens", "blocks")}, "cpu": cpu}


def _direct_init(tok_dir):
    from tokenizers import Tokenizer

    _TOK["tok"] = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))


def _direct_share(job) -> tuple[int, float, float, float]:
    """Encode share `i` of `n` of the texts (a contiguous slice), `batch` at a time, with a tokenizer loaded afresh
    (its caches cold, as in the stage's new workers) before the clock; its tokens, CPU seconds, start and end."""
    i, n, fast, batch, tok_dir = job
    _direct_init(tok_dir)
    tok, texts = _TOK["tok"], _TEXTS[i * len(_TEXTS) // n : (i + 1) * len(_TEXTS) // n]
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    c, t = time.process_time(), time.perf_counter()
    tokens = sum(
        len(e.ids)
        for b in range(0, len(texts), batch)
        for e in encode(texts[b : b + batch], add_special_tokens=False)
    )
    return tokens, time.process_time() - c, t, time.perf_counter()


def run_direct(pool, n: int, fast: bool, batch: int, tok_dir) -> tuple[float, int, float]:
    """Wall seconds (first start to last end of the shares' encoding: perf_counter is one clock for all processes),
    tokens and CPU seconds (summed over the pool) of one direct pass over the texts."""
    got = pool.map(_direct_share, [(i, n, fast, batch, str(tok_dir)) for i in range(n)], chunksize=1)
    return max(g[3] for g in got) - min(g[2] for g in got), sum(g[0] for g in got), sum(g[1] for g in got)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def profile_stage(a, src_dir, tmp, tok_dir, direct_cpu_s: float, mb: float):
    """Where one extra run of the stage spends its time: the parent's phases (wrapped module functions), the start-up
    of a spawned pool like the stage's, and a cProfile of one worker's encode_item on the stage's first work item."""
    import cProfile
    import io
    import multiprocessing as mp
    import pstats

    from cmixtral import data as m

    spent, captured = {}, {}

    def wrap(name):
        f = getattr(m, name)

        def timed(*args, **kw):
            t = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                spent[name] = spent.get(name, 0) + time.perf_counter() - t

        return f, timed

    names = [
        "special_ids",
        "token_dtype",
        "light_checksum",
        "source_names",
        "fetch_sources",
        "source_checksum",
        "file_work",
        "_run_work",
        "finish_file",
        "assemble_split",
    ]
    orig = {}
    for name in names:
        orig[name], timed = wrap(name)
        setattr(m, name, timed)
    run_work = m._run_work

    def capture(work, *args, **kw):
        captured["work"], captured["enter"] = work, time.perf_counter()
        try:
            return run_work(work, *args, **kw)
        finally:
            captured["exit"] = time.perf_counter()

    m._run_work = capture
    try:
        ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        start = time.perf_counter()
        total, _ = run_stage(a, src_dir, tmp / "run-profile", tok_dir)
        end = time.perf_counter()
        cpu_parent, cpu_workers = (
            (x.ru_utime + x.ru_stime) - (r.ru_utime + r.ru_stime)
            for x, r in zip(
                [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)], ru
            )
        )
    finally:
        for name, f in orig.items():
            setattr(m, name, f)
    work = captured["work"]
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(a.num_proc, m._init_worker, (str(tok_dir),)) as pool:
        pool.map(abs, range(a.num_proc))
    startup = time.perf_counter() - t
    print(
        f"\nwhere the stage's time goes (one more run: {total:.2f} s wall, {len(work)} work items of {a.chunk_mb} MB):"
    )
    for name in names:
        if name in spent:
            extra = {
                "_run_work": "  (the pool's start-up, the work items, and finish_file as each file ends)",
                "finish_file": "  (within _run_work: each file's tail blocks and record, while the workers go on)",
                "source_checksum": "  (md5 of files up to 64 MB; a bigger file is sampled, a hub file named by its blob)",
            }.get(name, "")
            print(f"  parent {name:<16} {spent[name]:7.2f} s{extra}")
    before, after = captured["enter"] - start, end - captured["exit"]
    print(
        f"  wall: {before:.2f} s in the parent before the pool starts, {captured['exit'] - captured['enter']:.2f} s"
        f" in _run_work, {after:.2f} s after it (assembling); CPU: parent {cpu_parent:.2f} s, workers {cpu_workers:.2f} s"
    )
    print(
        f"  start-up of a spawned pool of {a.num_proc} (import, load the tokenizer): {startup:.2f} s (within _run_work)"
    )
    m._init_worker(str(tok_dir))  # this process as one worker: single-threaded tokenizer
    item = dict(work[0], out={s: str(tmp / f"profile-{s}.arrow") for s in work[0]["out"]})
    tok, texts = m._TOK["tok"], [d[-1] for d in m.file_documents(item, {})]  # (position, ..., text)

    def best(f, k: int = 3) -> float:
        "The least of `k` timings of `f()` in this one process (no profiler)."
        out = []
        for _ in range(k):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
        return min(out)

    t_item = best(lambda: m.encode_item(item))
    t_read = best(lambda: list(m.file_documents(item, {})))
    t_enc = best(
        lambda: [
            len(e.ids)  # what the direct contender does with each document
            for b in range(0, len(texts), a.batch_docs)
            for e in tok.encode_batch_fast(texts[b : b + a.batch_docs], add_special_tokens=False)
        ]
    )
    print(
        f"  one work item ({len(texts):,} documents) in this process, best of 3, no profiler: encode_item {t_item:.2f} s;"
        f" the direct contender's work on its texts {t_enc:.2f} s; reading and parsing its lines alone {t_read:.3f} s;"
        f" encode_item costs {100 * (t_item / t_enc - 1):.0f}% more"
    )
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.runcall(m.encode_item, item)
    item_s = time.perf_counter() - t
    st = pstats.Stats(prof)
    cats = {
        "encode_batch_fast (Rust)": ("encode_batch",),
        "read, parse JSON lines": (
            "readline",
            "orjson",
            "loads",
            "_line_text",
            "_text",
            "file_documents",
            "islice",
        ),
        "split_of": ("split_of",),
        "pack (pack_ids, lists to arrays)": ("pack_ids", "asarray", "tolist", "numpy"),
        "write Arrow": ("pyarrow", "write_batch", "from_arrays", "record_batch", "OSFile", "new_stream"),
    }
    sums = dict.fromkeys(cats, 0.0)
    for (file, line, fn), (cc, nc, tt, ct, callers) in st.stats.items():
        label = f"{file}:{fn}"
        for c, keys in cats.items():
            if any(k in label for k in keys):
                sums[c] += tt
                break
    work_mb = (item["span"][1] - item["span"][0]) / 2**20 if "span" in item else a.chunk_mb
    direct_s = direct_cpu_s * work_mb / mb
    print(
        f"  one worker's encode_item on {work_mb:.1f} MB, run in this process: {item_s:.2f} s under cProfile"
        f" ({st.total_tt:.2f} s profiled); the direct contender spends {direct_s:.2f} CPU seconds on as much text:"
    )
    for c, s in sums.items():
        print(f"    {c:<34} {s:6.2f} s  {100 * s / st.total_tt:5.1f}%")
    print(
        f"    {'the rest (encode_item loop)':<34} {st.total_tt - sum(sums.values()):6.2f} s"
        f"  {100 * (st.total_tt - sum(sums.values())) / st.total_tt:5.1f}%"
    )
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(10)
    print("\n".join("    " + l for l in buf.getvalue().splitlines() if l.strip())[-2500:])


def vm_hwm_mb(pid="self") -> float:
    "Peak resident memory (VmHWM) of process `pid`, in MB; 0 once it is gone."
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def children(pid: int) -> list[int]:
    "The ids of the processes whose parent is `pid`."
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def child(a):
    """--child SRC RUN TOK: the stage alone in this process; print its seconds, counts and peak RSS (VmHWM: this
    process's after its imports and at the end, and its children's, polled every 0.1 s) as one JSON line."""
    import threading

    src_dir, run_dir, tok_dir = map(Path, a.child)
    import cmixtral.data  # noqa: F401  (the imports the stage needs, before the idle RSS)

    idle, peaks, done = vm_hwm_mb(), {}, threading.Event()

    def poll():
        while not done.wait(0.1):
            for pid in children(os.getpid()):
                peaks[pid] = max(peaks.get(pid, 0), vm_hwm_mb(pid))

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    secs, counts = run_stage(a, src_dir, run_dir, tok_dir)
    done.set(), th.join()
    print(
        "RESULT "
        + json.dumps(
            dict(
                seconds=secs,
                idle_mb=idle,
                self_mb=vm_hwm_mb(),
                kids_mb=max(peaks.values(), default=0),
                **counts,
            )
        )
    )


def scaling(a, tok_dir):
    sizes = [float(x) for x in a.scaling.split(",")]
    limit = int(a.limit_gb * 2**30)
    print(
        f"stage alone, each size in a fresh child process; {a.files} files, {a.num_proc} processes, chunk {a.chunk_mb} MB,"
        f" block {a.block_size}; tokenizer {rel(tok_dir)}"
        + (f"; address space capped at {a.limit_gb} GB a process" if limit else "")
    )
    print(
        "peak RSS: 'main' is the child's own (includes its imports; 'idle' is after the imports, before the stage),"
        " 'worker' its largest tokeniser process; VmHWM from /proc, the workers' polled every 0.1 s"
    )
    print(
        f"{'MB':>7} {'docs':>10} {'tokens':>12} {'seconds':>8} {'s/MB':>6} {'main MB':>8} {'idle MB':>8} {'worker MB':>9} {'load':>5}"
    )
    rows, t_all = [], time.time()
    for mb in sizes:
        if a.budget_s and time.time() - t_all > a.budget_s:
            print(
                f"stopped before {mb:g} MB: the run has taken {time.time() - t_all:.0f} s (--budget-s {a.budget_s})"
            )
            break
        tmp = Path(tempfile.mkdtemp(prefix="cmx-scale-"))
        size, n, _ = build_corpus(a.run, mb, a.files, tmp / "src", False)
        load = os.getloadavg()[0]
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(tmp / "src"),
            str(tmp / "run"),
            str(tok_dir),
            *[
                f"--{k.replace('_', '-')}={getattr(a, k)}"
                for k in ("num_proc", "chunk_mb", "block_size", "batch_docs")
            ],
        ]
        r = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "CMIXTRAL_QUIET": "1"},
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))) if limit else None,
        )
        import shutil

        shutil.rmtree(tmp)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if r.returncode or not line:
            print(f"{size / 2**20:>7.0f} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        res = json.loads(line[0][7:])
        row = {
            "mb": round(size / 2**20, 1),
            "files": a.files,
            "documents": n,
            "tokens": res["tokens"],
            "blocks": res["blocks"],
            "seconds": round(res["seconds"], 2),
            "cpu_s": round(res["cpu"], 2),
            "s_per_mb": round(res["seconds"] / (size / 2**20), 4),
            "s_per_mb_per_core": round(res["seconds"] * a.num_proc / (size / 2**20), 4),
            "main_peak_rss_mb": round(res["self_mb"], 1),
            "main_idle_rss_mb": round(res["idle_mb"], 1),
            "worker_peak_rss_mb": round(res["kids_mb"], 1),
            "num_proc": a.num_proc,
            "chunk_mb": a.chunk_mb,
            "block_size": a.block_size,
            "limit_gb": a.limit_gb,
            "load_1min": round(load, 2),
            "tokenizer": rel(tok_dir),
            "cores": os.cpu_count(),
        }
        rows.append(row)
        print(
            f"{row['mb']:>7.0f} {n:>10,} {row['tokens']:>12,} {row['seconds']:>8.1f} {row['s_per_mb']:>6.3f}"
            f" {row['main_peak_rss_mb']:>8.0f} {row['main_idle_rss_mb']:>8.0f} {row['worker_peak_rss_mb']:>9.0f} {load:>5.2f}",
            flush=True,
        )
    if rows and not a.no_write:
        write_csv(RESULTS / "data_scaling.csv", rows)


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {rel(path)}")


def ratio(a, tok_dir):
    import multiprocessing as mp
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="cmx-bench-"))
    size, n, texts = build_corpus(a.run, a.mb, a.files, tmp / "src", True)
    _TEXTS[:] = texts
    chars = sum(map(len, texts))
    print(
        f"corpus: {size / 2**20:.1f} MB in {a.files} files, {n:,} documents, {chars:,} characters; tokenizer {rel(tok_dir)};"
        f" {a.num_proc} processes on {os.cpu_count()} cores"
    )
    print(
        "direct: texts already in memory (not read from the files, as in this benchmark before); pool started and"
        " a fresh tokenizer loaded before the clock. stage: from the files to the assembled dataset, spawn start-up included"
    )
    pool = mp.get_context("fork").Pool(
        a.num_proc, _direct_init, (str(tok_dir),)
    )  # forked: inherits the texts
    pool.map(abs, range(a.num_proc))
    runs, tokens = [], None
    for k in range(
        a.repeats
    ):  # interleaved, so that load from other processes falls on every contender alike
        load = os.getloadavg()[0]
        t_fast, n_fast, c_fast = run_direct(pool, a.num_proc, True, a.batch_docs, tok_dir)
        t_batch, n_batch, _ = (
            run_direct(pool, a.num_proc, False, a.batch_docs, tok_dir)
            if not a.no_encode_batch
            else (float("nan"), n_fast, float("nan"))
        )
        t_stage, counts = run_stage(a, tmp / "src", tmp / f"run{k}", tok_dir)
        shutil.rmtree(tmp / f"run{k}")
        assert n_fast == n_batch == counts["tokens"] and counts["docs"] == n, (n_fast, n_batch, counts, n)
        tokens = counts["tokens"]
        runs.append(
            {
                "mb": round(size / 2**20, 1),
                "files": a.files,
                "documents": n,
                "tokens": tokens,
                "round": k + 1,
                "direct_fast_s": round(t_fast, 2),
                "direct_batch_s": round(t_batch, 2),
                "stage_s": round(t_stage, 2),
                "ratio_fast": round(t_fast / t_stage, 3),
                "ratio_batch": round(t_batch / t_stage, 3),
                "direct_fast_cpu_s": round(c_fast, 2),
                "stage_cpu_s": round(counts["cpu"], 2),
                "cpu_ratio_fast": round(c_fast / counts["cpu"], 3),
                "num_proc": a.num_proc,
                "chunk_mb": a.chunk_mb,
                "block_size": a.block_size,
                "load_1min": round(load, 2),
                "tokenizer": rel(tok_dir),
                "cores": os.cpu_count(),
                "direct_reads_files": False,
            }
        )
        print(
            f"round {k + 1}: direct encode_batch_fast {t_fast:6.2f} s, direct encode_batch {t_batch:6.2f} s,"
            f" stage {t_stage:6.2f} s -> stage/direct {t_fast / t_stage:.2f}x (fast) {t_batch / t_stage:.2f}x (encode_batch);"
            f" load {load:.2f}; CPU seconds direct fast {c_fast:.1f}, stage {counts['cpu']:.1f} ->"
            f" {c_fast / counts['cpu']:.2f}x",
            flush=True,
        )
    pool.close(), pool.join()
    med = {
        k: median([r[k] for r in runs])
        for k in ("direct_fast_s", "direct_batch_s", "stage_s", "direct_fast_cpu_s", "stage_cpu_s")
    }
    mb = size / 2**20
    print(f"median of {a.repeats} rounds, {tokens:,} tokens:")
    for name, k in (
        ("direct encode_batch_fast", "direct_fast_s"),
        ("direct encode_batch", "direct_batch_s"),
        ("stage encode_sources", "stage_s"),
    ):
        print(f"  {name:<25} {med[k]:7.2f} s  {tokens / med[k]:>10,.0f} tokens/s  {mb / med[k]:.2f} MB/s")
    r = med["direct_fast_s"] / med["stage_s"]
    print(
        f"ratio stage/direct: {r:.2f}x vs encode_batch_fast (like for like: the stage calls it), "
        f"{med['direct_batch_s'] / med['stage_s']:.2f}x vs encode_batch; per round (fast) "
        + ", ".join(f"{x['ratio_fast']:.2f}" for x in runs)
    )
    rc = med["direct_fast_cpu_s"] / med["stage_cpu_s"]
    print(
        f"CPU seconds (less sensitive to other users' load): direct encode_batch_fast {med['direct_fast_cpu_s']:.1f},"
        f" stage {med['stage_cpu_s']:.1f} (its parent and workers) -> {rc:.2f}x"
    )
    if not a.no_write:
        runs.append(
            dict(
                runs[-1],
                round="median",
                direct_fast_s=round(med["direct_fast_s"], 2),
                direct_batch_s=round(med["direct_batch_s"], 2),
                stage_s=round(med["stage_s"], 2),
                ratio_fast=round(r, 3),
                ratio_batch=round(med["direct_batch_s"] / med["stage_s"], 3),
                direct_fast_cpu_s=round(med["direct_fast_cpu_s"], 2),
                stage_cpu_s=round(med["stage_cpu_s"], 2),
                cpu_ratio_fast=round(rc, 3),
                load_1min=round(median([x["load_1min"] for x in runs]), 2),
            )
        )
        write_csv(RESULTS / "data_throughput.csv", runs)
    if r < 0.9 or a.profile:
        profile_stage(a, tmp / "src", tmp, tok_dir, med["direct_fast_cpu_s"], mb)
    shutil.rmtree(tmp)


if __name__ == "__main__":  # spawned workers re-import this file: keep the work out of their start-up
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument(
        "--stage", default="vocab", help="whose tokenizer: vocab (merged, uint16) or assets (Mixtral's)"
    )
    ap.add_argument("--mb", type=float, default=120)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--chunk-mb", type=float, default=4.0)
    ap.add_argument("--batch-docs", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-encode-batch", action="store_true", help="skip the direct encode_batch contender")
    ap.add_argument("--profile", action="store_true", help="print where the stage's time goes at any ratio")
    ap.add_argument("--scaling", default="", help="sizes in MB, e.g. 10,30,100,300: the scaling run")
    ap.add_argument(
        "--limit-gb", type=float, default=0, help="--scaling: RLIMIT_AS of each process (0: none)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=1200, help="--scaling: start no new size after this many seconds"
    )
    ap.add_argument("--no-write", action="store_true", help="print only, write no CSV")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("CMIXTRAL_QUIET", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread a process, in both contenders
    if a.child:
        child(a)
        sys.exit()
    os.chdir(ROOT)
    from cmixtral.data import tokenizer_dir

    tok = tokenizer_dir(a.run, a.stage)
    scaling(a, tok) if a.scaling else ratio(a, tok)
