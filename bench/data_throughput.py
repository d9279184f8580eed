"""Tokenisation throughput of the data stage against the `tokenizers` batch encoder called directly.

    python bench/data_throughput.py [--run runs/tiny] [--stage assets] [--mb 30] [--num-proc 2] [--chunk-mb 1] [--repeats 3]

Builds a jsonl of about `--mb` MB from the run's assets corpora (Chinese and English, train slices),
then times, on the same text and the same cores:
  direct  Tokenizer.encode_batch and Tokenizer.encode_batch_fast (same ids, no offsets) over all documents
          (Rust threads on every core; text already in memory)
  stage   cmixtral.data.encode_files (read jsonl, tokenise in `--num-proc` processes, add <s>/</s>,
          pack into blocks, write the HF dataset)
in `--repeats` interleaved rounds, and prints the median rates and ratios (target: stage >= 0.8x direct; the stage uses encode_batch_fast,
so the ratio against direct encode_batch_fast is the like-for-like one). A benchmark, not a test.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

if __name__ == "__main__":        # worker processes (spawn) re-import this file: keep torch & co. out of their start-up
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/tiny"); ap.add_argument("--stage", default="assets")
    ap.add_argument("--mb", type=float, default=30); ap.add_argument("--num-proc", type=int, default=os.cpu_count())
    ap.add_argument("--block-size", type=int, default=256); ap.add_argument("--chunk-mb", type=float, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from cmixtral.assets import corpus_paths
    from cmixtral.data import encode_files, tokenizer_dir
    os.environ.setdefault("CMIXTRAL_QUIET", "1")
    tok_dir = tokenizer_dir(a.run, a.stage)
    src = [l for p in corpus_paths(a.run, None, "train") for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="cmx-bench-"))
    corpus, size, texts = tmp/"corpus.jsonl", 0, []
    with open(corpus, "w", encoding="utf-8") as f:
        i = 0
        while size < a.mb * 2**20:
            t = json.loads(src[i % len(src)])["text"]
            line = json.dumps({"text": t}, ensure_ascii=False) + "\n"
            f.write(line); size += len(line.encode()); texts.append(t); i += 1
    chars = sum(map(len, texts))
    print(f"corpus: {size/2**20:.1f} MB, {len(texts):,} documents, {chars:,} characters; tokenizer {tok_dir}; {os.cpu_count()} cores")

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_dir/"tokenizer.json"))
    def direct(encode):
        t, n = time.perf_counter(), 0
        for i in range(0, len(texts), 512):
            n += sum(len(e.ids) for e in encode(texts[i:i + 512], add_special_tokens=False))
        return time.perf_counter() - t, n
    def stage(k):
        t = time.perf_counter()
        row = encode_files([(corpus, tmp/f"enc{k}")], tok_dir, a.block_size, "document", a.num_proc, chunk_mb=a.chunk_mb, batch_docs=512)[0]
        return time.perf_counter() - t, row
    runs = []
    for k in range(a.repeats):        # interleaved, so that load from other processes falls on all three alike
        (t_direct, n_direct), (t_fast, n_fast), (t_stage, row) = direct(tok.encode_batch), direct(tok.encode_batch_fast), stage(k)
        assert n_fast == n_direct and row["tokens"] == n_direct, (n_fast, row["tokens"], n_direct)
        runs.append((t_direct, t_fast, t_stage))
        print(f"round {k + 1}: direct encode_batch {t_direct:6.2f} s, direct encode_batch_fast {t_fast:6.2f} s, "
              f"stage encode_files {t_stage:6.2f} s  -> {t_direct / t_stage:.2f}x / {t_fast / t_stage:.2f}x", flush=True)
    t_direct, t_fast, t_stage = (sorted(r[i] for r in runs)[len(runs) // 2] for i in range(3))
    print(f"median of {a.repeats} rounds, {row['tokens']:,} tokens, {row['blocks']:,} blocks:")
    print(f"direct encode_batch : {t_direct:7.2f} s  {n_direct / t_direct:,.0f} tokens/s  {size / 2**20 / t_direct:.2f} MB/s")
    print(f"direct encode_batch_fast: {t_fast:7.2f} s  {n_fast / t_fast:,.0f} tokens/s  {size / 2**20 / t_fast:.2f} MB/s  (same ids, no offsets)")
    print(f"stage encode_files  : {t_stage:7.2f} s  {row['tokens'] / t_stage:,.0f} tokens/s  {size / 2**20 / t_stage:.2f} MB/s"
          f"  ({a.num_proc} processes, incl. start-up, packing and writing)")
    ratios = sorted(r[1] / r[2] for r in runs)
    print(f"ratio stage/direct  : {t_direct / t_stage:.2f}x vs encode_batch, {t_fast / t_stage:.2f}x vs encode_batch_fast"
          f"  (medians; per round vs encode_batch_fast {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.8x,"
          f" the stage calls encode_batch_fast, so the second is the like-for-like ratio)")
    import shutil; shutil.rmtree(tmp)
