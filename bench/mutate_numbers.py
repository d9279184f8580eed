"""Plant wrong numbers in a copy of the book and count how many `tests/test_numbers.py` catches.

    python bench/mutate_numbers.py [--seed 27] [--out bench/results/number_mutations.csv]

The notebooks, `figures.json` and `cited_numbers.yaml` are copied to a temporary folder. Over every number the test
checks (and passes on the book as it is), one mutation at a time is planted by rule: the last digit changed, the sign
flipped, the unit changed (MiB<->GiB, MB<->GB, s<->min, h->min, % -> points, M<->B), two neighbouring numbers of the
same kind in one sentence or table row swapped; plus the kinds of wrong number a read-through found (`read-through` rows).
After each, the test's own checking function (`check_notebook`, imported from the test: one implementation) runs on
the mutated copy; a mutation is caught when it raises a flag the unmutated copy does not. Writes one row per mutation
(notebook, cell, original, mutated, rule, caught), and beside it a summary (`.json`: seed, planted, caught, and the
flags the unmutated book raises, its false alarms), and prints the share caught, by rule, and what escaped.
"""

import argparse
import csv
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/"tests"))
import test_numbers as T  # the test's checking function itself, not a copy

UNIT_SWAP = {"MiB": "GiB", "GiB": "MiB", "KiB": "MiB", "MB": "GB", "GB": "MB", "KB": "MB", "TB": "GB", "s": "min",
             "min": "s", "h": "min", "ms": "s", "M": "B", "B": "M", "k": "M", "K": "M", "T": "B"}
UNIT_TEXT = re.compile(r"(%|[A-Za-z]+)$")


def last_digit(text: str, rng) -> str:
    i = max(j for j, ch in enumerate(text) if ch.isdigit())
    return text[:i] + rng.choice([d for d in "0123456789" if d != text[i]]) + text[i + 1:]


def flip_sign(text: str) -> str:
    if text[0] in "−-":
        return "+" + text[1:]
    if text[0] == "+":
        return "−" + text[1:]
    return "−" + text


def change_unit(n: "T.Number") -> str | None:
    if n.unit == "%":
        return n.text[:-1] + " points"
    m = UNIT_TEXT.search(n.text)
    if not m or n.unit not in UNIT_SWAP:
        return None
    return n.text[:m.start()] + UNIT_SWAP[n.unit]


def planted(md: str, numbers: list, seed: str) -> list:
    """(rule, [(Number, new text)]) for each mutation of the checked `numbers` of one cell's markdown `md`; the new
    digit is drawn from a generator seeded by `seed` and the number's place, so a number's mutation does not depend
    on the others."""
    out = []
    for n in numbers:
        out.append(("last digit", [(n, last_digit(n.text, random.Random(f"{seed}:{n.start}")))]))
        if n.value != 0:
            out.append(("sign", [(n, flip_sign(n.text))]))
        if (u := change_unit(n)) is not None:
            out.append(("unit", [(n, u)]))
    for s, e, _ in T.segments(md):
        inside = [n for n in numbers if s <= n.start < e]
        for kind in dict.fromkeys(map(T._kind, inside)):
            same = [n for n in inside if T._kind(n) == kind]
            for a, b in pairwise(same):
                if a.value != b.value:
                    out.append(("swap", [(a, b.text), (b, a.text)]))
    return out


def apply(md: str, changes: list) -> str:
    for n, new in sorted(changes, key=lambda c: -c[0].start):
        md = md[:n.start] + new + md[n.end:]
    return md


def read_through_examples(book: dict) -> list:
    """The kinds of wrong number a read-through planted: (notebook, cell, rule, [(Number, new)], note). Where the
    book no longer has the exact number, the same kind of change on the nearest equivalent number."""
    wanted = [("−23%", "−43%", "a percentage's digit"), ("7.40", "7.41", "an arm's bits per character, last digit"),
              ("9.63", "9.73", "the base's bits per character, a middle digit"),
              ("41.7%", "41.5%", "a percentage, last digit"), ("11.1%", "11.2%", "a percentage, last digit")]
    fallback = {"7.40": r"^7\.\d+$", "9.63": r"^9\.\d+$", "41.7%": r"^\d\d\.\d%$", "11.1%": r"^\+?1\d\.\d%$",
                "−23%": r"^[−-]\d\d(\.\d)?%$"}
    book = dict(sorted(book.items(), key=lambda kv: kv[0] != "index"))      # the read-through's numbers: the index first
    out = []
    for old, new, what in wanted:
        hit = next(((k, i, n) for k, cells in book.items() for i, (md, ns) in cells.items() for n in ns
                    if n.text == old), None)
        note = "as found"
        if hit is None:
            hit = next(((k, i, n) for k, cells in book.items() for i, (md, ns) in cells.items() for n in ns
                        if re.match(fallback[old], n.text)), None)
            if hit is None:
                continue
            k, i, n = hit
            digits = [j for j, ch in enumerate(n.text) if ch.isdigit()]
            j = {"9.63": digits[1], "−23%": digits[0]}.get(old, digits[-1])
            new = n.text[:j] + str((int(n.text[j]) + 2) % 10) + n.text[j + 1:]
            note = f"{old} is not in the prose: {n.text} -> {new} instead"
        k, i, n = hit
        out.append((k, i, f"read-through: {what}", [(n, new)], note))
    # 446 MiB -> 446 GiB: a number with a unit of bytes
    units = [(k, i, n) for k, cells in book.items() for i, (md, ns) in cells.items() for n in ns
             if n.unit in ("MiB", "GiB", "GB", "MB")]
    hit = next((u for u in units if u[2].text == "446 MiB"), units[0] if units else None)
    if hit:
        k, i, n = hit
        out.append((k, i, "read-through: unit of bytes", [(n, change_unit(n))],
                    "as found" if n.text == "446 MiB" else f"446 MiB is not in the prose: {n.text} instead"))
    # two arms' values swapped: the first figures of the `mean` and `normal` rows of a table (the index's first)
    first = {}
    for k, cells in book.items():
        for i, (md, ns) in cells.items():
            for n in ns:
                row = md[md.rfind("\n", 0, n.start) + 1:n.start]
                arm = re.match(r"\|\s*(?:\(\w\)\s*)?[^|]*?`?(mean|normal)`?\b[^|]*\|\s*\**$", row)
                if arm and n.decimals >= 2:
                    first.setdefault((k, i, arm.group(1)), n)
    pairs = [(k, i) for (k, i, arm) in first if arm == "mean" and (k, i, "normal") in first]
    if pairs:
        k, i = pairs[0]
        a, b = first[(k, i, "mean")], first[(k, i, "normal")]
        out.append((k, i, "read-through: two arms' values swapped", [(a, b.text), (b, a.text)], "as found"))
        return out
    arms = re.compile(r"\b(mean|normal|first_piece|mean_calibrated|mean_input|global_mean|spelling|base-vocab)\b")
    for k, cells in book.items():                     # no table of arms: two arms' values in one sentence
        for i, (md, ns) in cells.items():
            for s, e, _ in T.segments(md):
                dec = [n for n in ns if s <= n.start < e and n.decimals >= 2 and n.unit is None]
                pair = next(((a, b) for a, b in pairwise(dec) if a.text != b.text), None)
                if len(set(arms.findall(md[s:e]))) >= 2 and pair:
                    a, b = pair
                    out.append((k, i, "read-through: two arms' values swapped", [(a, b.text), (b, a.text)],
                                "no table row of an arm is in the prose: two arms' values in one sentence instead"))
                    return out
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=27)
    ap.add_argument("--out", default=str(ROOT/"bench/results/number_mutations.csv"))
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        nbs = Path(d)
        for p in [*T.NBS.glob("*.ipynb"), T.FIGURES, T.CITED]:
            shutil.copy(p, nbs/p.name)
        base = {p.stem: T.check_notebook(p, nbs) for p in sorted(nbs.glob("*.ipynb"))}
        key = lambda f: (f.cell, f.number, f.why)
        book = {}                                           # notebook -> cell -> (markdown, checked numbers)
        for p in sorted(nbs.glob("*.ipynb")):
            flagged = {(f.cell, f.number) for f in base[p.stem]}
            nb = json.loads(p.read_text(encoding="utf-8"))
            for i, c in enumerate(nb["cells"]):
                if c["cell_type"] == "markdown":
                    md = "".join(c["source"])
                    ns = [n for n in T.measured_numbers(md) if (i, n.text) not in flagged]
                    if ns:
                        book.setdefault(p.stem, {})[i] = (md, ns)
        plan = [(k, i, "read-through" if r.startswith("read-through") else r, r, ch, note)
                for k, i, r, ch, note in read_through_examples(book)]
        for k, cells in book.items():
            for i, (md, ns) in cells.items():
                plan += [(k, i, r, r, ch, "") for r, ch in planted(md, ns, f"{args.seed}:{k}:{i}")]
        rows = []
        for k, i, rule, label, changes, note in plan:
            path = nbs/f"{k}.ipynb"
            original = path.read_bytes()
            nb = json.loads(original)
            md = "".join(nb["cells"][i]["source"])
            nb["cells"][i]["source"] = apply(md, changes).splitlines(keepends=True)
            path.write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
            new = {key(f) for f in T.check_notebook(path, nbs)} - {key(f) for f in base[k]}
            path.write_bytes(original)
            rows.append({"notebook": k, "cell": i, "original": " / ".join(n.text for n, _ in changes),
                         "mutated": " / ".join(t for _, t in changes), "rule": rule, "caught": int(bool(new)),
                         "note": (label if label != rule else "") + (f" ({note})" if note else "")})
        false_alarms = [str(f) for fs in base.values() for f in fs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["notebook", "cell", "original", "mutated", "rule", "caught", "note"])
        w.writeheader()
        w.writerows(rows)
    n, caught = len(rows), sum(r["caught"] for r in rows)
    summary = {"seed": args.seed, "planted": n, "caught": caught, "false_alarms": len(false_alarms)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"{caught} of {n} planted wrong numbers caught ({100*caught/n:.1f}%), seed {args.seed}, "
          f"{time.time() - t0:.0f} s; written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    for rule, total in Counter(r["rule"] for r in rows).items():
        got = sum(r["caught"] for r in rows if r["rule"] == rule)
        print(f"  {rule:<10} {got:>4} of {total:<4} ({100*got/total:.1f}%)")
    print("escaped:")
    for r in rows:
        if not r["caught"]:
            print(f"  {r['notebook']} cell {r['cell']}: {r['original']} -> {r['mutated']} ({r['rule']}) {r['note']}")
    print(f"the unmutated book: {len(false_alarms)} flags (numbers the test flags as they stand; left out of the "
          "mutations)" + "".join(f"\n  {f}" for f in false_alarms))
    return rows


if __name__ == "__main__":
    main()
