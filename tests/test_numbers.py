"""Every measured-looking number in the notebooks' prose is traced to a source that holds it, as the prose rounds it.

Where a number may come from:
- a stage chapter (`30_data`): the outputs of that notebook, the figures of its own stage in `nbs/figures.json` (keys
  `data.…`, `data/…`, `pipeline.data.seconds`, written by `cmixtral adopt`), and the published numbers of
  `nbs/cited_numbers.yaml` (each with the document that holds it);
- any other chapter: its own outputs and the cited numbers;
- the index: its own outputs, the cited numbers, and, for a block of it (from a heading or a paragraph opening in bold
  to the next, across cells), the outputs and stage figures of every notebook the block names (`40_pretrain`,
  `nbs/81_memory`) and the figures of every table it names (`bench/out/fresh.csv`). A block that states a stage's
  figure names that stage's notebook.

What counts: a decimal, an integer from 10 up, any percentage and any signed number in a Markdown cell; not code,
links, formulas, versions (`v2`, `4.57.1`, `transformers 4.57`), identifiers (`zh_c3500`, `Qwen2-1.5B`, `seed 004`),
a type's width (`16-bit`), code points and years.

How a number matches (one rule each):
- value: a source value rounds to it at the decimals the prose shows (7.40 holds 7.4003, not 7.4071).
- sign: a number written with a sign (−, - or +) matches only a value of that sign, one without a sign only a value
  that is not negative (−23% is not 23%).
- percentage: 23.2% matches a value printed as 23.2%, a figure whose key ends in `pct`, or the fraction 0.232 (of that
  sign) anywhere; never a bare 23.2 or a value with another unit.
- unit: a number written with a unit (446 MiB, 13.1 s, 2.4 min, 606M) matches only a value printed with the same unit
  in an output, a figure whose key names it (`…seconds` and `…timings…` s, `…minutes` min, `…_gb` GB, `…bytes` B), a
  cited number whose source prints it with that unit, or, for a scale letter (k, M, B), the value times the scale; a
  number without a unit matches only a value without one (446 is not 446 MiB).
- integer: a whole number (not a percentage) matches only a whole value, unless the prose says it is rounded
  ("about 46", "≈ 93", "nearly", "over"): 64 does not hold 65.69.
- order: two neighbouring numbers of the same kind (unit; decimal or integer) in one table row, or two neighbouring
  decimals of the same kind in one sentence, that one output line (a line of text, a table's row) holds together
  stand in that line's order.
- row: when the first cell of a table row, or the words that name a number in a sentence ("Qwen2 with 43.7% fewer"),
  name a row of an output table (the words before a line's first number) or of a figure (a table's row label in its
  key, `pretrain/arms.csv:mean:zh`) that holds one of its numbers, the number has a source in that row (two arms'
  values swapped are caught).
- output order: two neighbouring numbers of the same kind in one sentence or table row that one output (a cell's
  printed text) holds stand in its order, line by line, when each is written with at least 3 significant digits; two
  listed numbers (only `/`, `,`, `and`, `or` or `to` between them) stand in the order of their first mentions in the
  output (a cited document's order counts too).
- naming: a number written with at most 2 significant digits (0.05, 16, 5%, 93 GB), which many sources hold by
  chance, a whole number without a unit, a percentage and a signed number have a source named by the words that name
  them in their sentence (`nearest_words`: each word names the nearest number of its clause; numbers listed together
  share their words; in a table, the row's first cell names each number too): an output number named by the words
  beside it on its line or by its column's header (a line of numbers alone by the last line of its cell's code), a
  figure whose key has one of those words, a cited number whose `words` has one, or a bare line of numbers. A whole
  number, a percentage or a signed number that a cited entry without `words` holds (a published figure) is exempt. A
  number a cited entry with `words` holds always needs a named source; one that only such entries hold needs one of
  their words nearest to it (25,000 "added" and 57,000 "in all" swapped are caught). A cited setting marked `pin: true`
  fixes the number that stands right beside its words (`temperature 0.8`, `alpha = 128`). Words match with their parts
  at `_` and `-`, joined (held-out, heldout), singular, and with a code's short names read in full (`chars`,
  character; `vocab`, vocabulary; `zh`, Chinese).

A sentence runs across the lines of its paragraph or list item to its full stop (`.`, `;`, `!`, `?`).

`check_book` (and `check_notebook`, for one) is the one implementation: the tests below and `bench/mutate_numbers.py`,
which plants wrong numbers and counts the ones caught, both call it.
"""

import bisect
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def shared_dir() -> Path:
    "The reference documents: `../shared` beside the clone (for a git worktree, beside its main checkout)."
    try:
        r = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                           capture_output=True, text=True)
        main = Path(r.stdout.strip()).parent if r.returncode == 0 and r.stdout.strip() else ROOT
    except OSError:                                       # no git: only the clone's own neighbour
        main = ROOT
    return next((d for d in (ROOT.parent/"shared", main.parent/"shared") if d.is_dir()), ROOT.parent/"shared")


SHARED = shared_dir()
CITED = NBS/"cited_numbers.yaml"
FIGURES = NBS/"figures.json"
NOTEBOOKS = sorted(NBS.glob("*.ipynb"))
ANY = "*"                                                  # the unit of a cited number whose source is not at hand

# Prose that holds no measured number: code, link targets and URLs, HTML tags, and display formulas.
NOT_PROSE = re.compile(r"```.*?```|~~~.*?~~~|`[^`\n]*`|\]\([^)\s]*(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*\S+"
                       r"|<https?://[^>]*>|https?://\S+|<[^>\n]+>|\$\$.*?\$\$", re.DOTALL | re.MULTILINE)
SCALE = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}     # 606M tokens, 46.7B parameters
# Units, as written after a number (with or without a space), to one spelling each.
UNIT_WORDS = {"%": "%", "points": "pt", "pp": "pt", "B": "B", "bytes": "B", "byte": "B", "KB": "KB", "MB": "MB",
              "GB": "GB", "TB": "TB", "KiB": "KiB", "MiB": "MiB", "GiB": "GiB", "TiB": "TiB", "ms": "ms", "s": "s",
              "sec": "s", "seconds": "s", "second": "s", "min": "min", "minutes": "min", "minute": "min", "h": "h",
              "hours": "h", "hour": "h", "MB/s": "MB/s"}
ATTACHED = {"", "x", *SCALE, *(u for u in UNIT_WORDS if u.isalpha() and u not in ("bytes", "byte", "points", "pp"))}
_UNIT_RE = "|".join(sorted((re.escape(u) for u in UNIT_WORDS if u not in ("B", "%")), key=len, reverse=True))
SPACED_UNIT = re.compile(rf"[ \u00a0]({_UNIT_RE})(?![\w/])")
# A number as prose writes it: a sign, digits with thousands separators, decimals, a unit or scale, a percent sign.
# Not a number: part of a word or path (`zh_c3500`, `Qwen2-1.5B`, `2-3`), a code point (U+3001).
PROSE_NUMBER = re.compile(r"(?<![\w.,/\\#@−+-])(?<!U\+)(v?)([−+-]?)(\d+(?:,\d{3}(?!\d))*(?:\.\d+)*)([A-Za-z]*)(%?)(?![\w/])")
# A number right after a package's name is its version: transformers 4.57, Python 3.11.
PACKAGES = re.compile(r"(?:python|transformers|torch|pytorch|peft|bitsandbytes|tokenizers|sentencepiece|datasets"
                      r"|lm-eval|lm_eval|pip|deepspeed|nbdev|accelerate|trl|numpy|pandas|cuda|matplotlib|license|slurm)\s*(?:>=|==|<)?\s*$"
                      r"|arxiv:\s*$", re.IGNORECASE)                                   # and a paper's arXiv number: arXiv:2401.01055
# A number in an output: a sign, thousands separators or not, exponents, then maybe a unit.
OUTPUT_NUMBER = re.compile(r"(?<![\w.])([−+-]?)(\d{1,3}(?:,\d{3}(?!\d))+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)"
                           rf"(?:\s?(%|(?:{_UNIT_RE}|[kMBT])(?![\w/])))?")
ABOUT = re.compile(r"(?:about|≈|~|roughly|nearly|around|almost|some|over|under|up to|at most|at least|just)\s*$", re.IGNORECASE)
NOTEBOOK_NAME = re.compile(r"(?<![\w/])(?:nbs/)?(\d\d_[a-z_]+)(?![\w])")
TABLE_NAME = re.compile(r"(?<![\w])([\w-]+\.csv)(?![\w])")


@dataclass(frozen=True)
class Number:
    "A number as prose writes it."
    text: str
    value: float                  # signed
    decimals: int
    unit: str | None              # "%", "s", "MiB", a scale letter ("M"), or None
    start: int
    end: int
    signed: bool = False
    about: bool = False           # "about 93 GB", "≈ 46": an integer rounded from a decimal


def _mask(md: str) -> str:
    return NOT_PROSE.sub(lambda m: " "*len(m.group()), md)


def measured_numbers(md: str):
    "Each measured-looking `Number` in markdown `md`, in order."
    masked = _mask(md)
    for m in PROSE_NUMBER.finditer(masked):
        v, sign, body, attached, pct = m.groups()
        if masked.startswith("-bit", m.end()):                          # a type's width: 16-bit, 32-bit
            continue
        if v or body.count(".") > 1 or attached not in ATTACHED or PACKAGES.search(masked[max(0, m.start() - 20):m.start()]):
            continue                                                      # versions, identifiers, hex
        digits, _, frac = body.replace(",", "").partition(".")
        if not frac and digits.startswith("0") and len(digits) > 1:      # a name (seed 004)
            continue
        unit, end = (pct and "%") or (UNIT_WORDS.get(attached) if attached not in SCALE else attached) or None, m.end()
        if attached == "x":
            unit = None
        if unit is None and not pct and (s := SPACED_UNIT.match(masked, m.end())):
            unit, end = UNIT_WORDS[s.group(1)], s.end()
        if not frac and not sign and unit not in ("%", "pt") and int(digits) < 10:   # small counts: 2 cores, 4 levels
            continue
        if (not frac and not sign and unit is None and "," not in body and len(digits) == 4
                and 1900 <= int(digits) <= 2100):                          # a year
            continue
        value = float(body.replace(",", "")) * (-1 if sign in "−-" and sign else 1)
        about = bool(ABOUT.search(masked[max(0, m.start() - 16):m.start()]))
        yield Number(md[m.start():end], value, len(frac), unit, m.start(), end, bool(sign), about)


def figure_unit(key: str) -> str | None:
    "The unit a figure's key names: seconds (and manifest timings), minutes, percent (`…pct`), GB, MB, bytes."
    leaf = re.split(r"[.:]", key)[-1].lower()
    if leaf.endswith("seconds") or leaf == "eval_runtime" or ".timings." in key:
        return "s"
    if leaf.endswith("minutes"):
        return "min"
    if leaf.endswith("pct"):
        return "%"
    if leaf.endswith("mb_per_s"):
        return "MB/s"
    for suffix, unit in (("_gb", "GB"), ("_mb", "MB"), ("bytes", "B")):
        if leaf.endswith(suffix):
            return unit
    return None


def output_texts(nb: dict):
    "(cell index, text) of each output of `nb`: streams, text/plain, text/markdown, and text/html with one row a line."
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            parts = [o.get("text", "")] + [o.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown")]
            html = o.get("data", {}).get("text/html", "")
            html = html if isinstance(html, str) else "".join(html)
            if html:
                html = re.sub(r"<style.*?</style>", " ", html, flags=re.DOTALL)
                rows = re.split(r"</tr>|<br\s*/?>|\n(?=[^<\s])", html)
                cells = lambda r: re.sub(r"<[^>]+>", " ", re.sub(r"</t[hd]>", " | ", r))   # a table's cells apart
                parts.append("\n".join(re.sub(r"\s*\|$", "", " ".join(cells(r).split())) for r in rows))
            for t in parts:
                t = t if isinstance(t, str) else "".join(t)
                if t:
                    yield i, t


@dataclass
class Pool:
    """Values a number may match: (value, unit, line) sorted by value; `line` names one output line (None for a figure
    or a cited number)."""
    values: list
    entries: list
    labels: dict                  # output line (`line_of`) -> the words before its first number (its row)
    names: dict                   # output line -> all its words; an output number (its place) -> the words beside it
                                  # and its column's header; cited number (source, -1, line, k) -> the entry's `words`
    pins: frozenset = frozenset()  # (value, words) of the cited settings a name pins (`pin: true`)

    @classmethod
    def of(cls, entries, labels=None, names=None, pins=frozenset()) -> "Pool":
        entries = sorted(entries, key=lambda e: e[0])
        return cls([e[0] for e in entries], entries, labels or {}, names or {}, frozenset(pins))

    def __add__(self, other):
        return Pool.of(self.entries + other.entries, self.labels | other.labels, self.names | other.names,
                       self.pins | other.pins)

    def words(self, entry) -> frozenset | None:
        "The label words of an entry: its output line's words, its figure key's parts; None for a cited number."
        where = entry[2]
        if where is None:
            return None
        return self.labels.get(line_of(where), frozenset()) if isinstance(where, tuple) else key_words(where)

    def naming(self, entry) -> frozenset | None:
        """The words that name an entry, split at `_` and `-`: the words beside it on its output line and its column's
        header (else every word of its line), the parts of its figure key, the `words` of its cited entry; None for a
        line with no word at all (a bare row of numbers)."""
        where = entry[2]
        if where is None:
            return frozenset()
        if isinstance(where, str):
            return word_parts(words(where.replace(":", " ").replace(".", " ").replace("/", " ")))
        if where[1] == -1:
            return word_parts(self.names.get(where, frozenset()))
        w = self.names.get(where) or self.names.get(line_of(where), frozenset())   # its own words, else its line's
        return word_parts(w) if w else None

    def hits(self, n: Number) -> list:
        "The entries that hold `n` as the prose writes it: value and decimals, sign, percent, unit or scale."
        tol = 0.5*10**-n.decimals*(1 + 1e-9)
        out = []

        def take(target, tol, ok):
            i = bisect.bisect_left(self.values, target - tol)
            while i < len(self.values) and self.values[i] <= target + tol:
                if ok(self.entries[i]):
                    out.append(self.entries[i])
                i += 1

        sign_ok = lambda e: ((e[0] < 0) == (n.value < 0) or e[0] == 0) and (
            n.decimals or n.about or n.unit == "%" or e[0] == round(e[0]))
        if n.unit is None:
            take(n.value, tol, lambda e: sign_ok(e) and e[1] in (None, ANY, *SCALE))
        elif n.unit in SCALE:
            take(n.value, tol, lambda e: sign_ok(e) and e[1] in (n.unit, ANY))
            take(n.value*SCALE[n.unit], tol*SCALE[n.unit], lambda e: sign_ok(e) and e[1] is None)
        else:
            take(n.value, tol, lambda e: sign_ok(e) and e[1] in (n.unit, ANY))
            if n.unit == "%":
                take(n.value/100, tol/100, lambda e: sign_ok(e) and e[1] is None)
        return out


def column_headers(lines: list) -> list:
    """For each line of an output, its table's header as [(start, end, words)] of the columns, or None: a `|` table
    (Markdown, or HTML as `output_texts` writes it) is headed by its first line and a column is a cell; a pandas text
    table by the line of names above its rows, a column ending where its name ends (both are right-aligned)."""
    out, head = [], None
    for j, line in enumerate(lines):
        if "|" in line and not re.fullmatch(r"[\s|:-]*", line):
            if head is None or head[0] != "|" or j == 0 or "|" not in lines[j - 1]:
                spans, pos = [], 0
                for cell in line.split("|"):
                    spans.append((pos, pos + len(cell), words(cell)))
                    pos += len(cell) + 1
                head = ("|", spans)
                out.append(None)
                continue
        elif not line.strip() or "|" in line:
            head = None
        elif not OUTPUT_NUMBER.search(line) and len(line.split()) >= 2 and j + 1 < len(lines) and \
                OUTPUT_NUMBER.search(lines[j + 1]):       # a pandas header: names, then rows of numbers
            head = ("pandas", [(m.start(), m.end(), words(m.group())) for m in re.finditer(r"\S+", line)])
            out.append(None)
            continue
        out.append(head)
    return out


def column_of(head, line: str, start: int, end: int) -> frozenset:
    "The header words of the column a number at `line[start:end]` stands in (nothing outside a table)."
    if head is None:
        return frozenset()
    kind, spans = head
    if kind == "|":
        col = line[:start].count("|")
        return spans[col][2] if col < len(spans) else frozenset()
    return next((w for s, e, w in spans if e == end), None) or next(
        (w for s, e, w in spans if s < end and start < e), frozenset())


@dataclass(frozen=True)
class Span:
    "Where a number stands in an output line."
    start: int
    end: int


def line_of(where: tuple) -> tuple:
    "The line a number stands on: (notebook, cell, line, part) of an output, (document, -1, line) of a cited one."
    return where[:3] + where[4:]


def output_pool(nb: dict, name: str) -> Pool:
    """The numbers in the outputs of `nb`, each with its unit and its place (`name`, cell, line, position in the line,
    which of the cell's printed texts); a number in a table is named by its line and by its column's header."""
    entries, labels, names, parts = [], {}, {}, {}
    code = {i: next((w for line in reversed("".join(c["source"]).splitlines()) if (w := words(line))), frozenset())
            for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"}          # what a cell prints last
    for i, text in output_texts(nb):
        part = parts[i] = parts.get(i, -1) + 1            # the cell's n-th printed text
        lines = text.splitlines()
        for j, (line, head) in enumerate(zip(lines, column_headers(lines))):
            labels[(name, i, j, part)] = words(OUTPUT_NUMBER.split(line, maxsplit=1)[0])   # the row's name
            names[(name, i, j, part)] = words(line) or (head is None and code.get(i)) or frozenset()
            found = list(OUTPUT_NUMBER.finditer(line))
            spans = [Span(m.start(), m.end()) for m in found]
            counted = [sp for sp, m in zip(spans, found) if not re.fullmatch(r"\d", m.group(2))]   # as in prose
            near = nearest_words(line, 0, len(line), counted)
            for k, m in enumerate(found):
                if near.get(spans[k]):                    # a number is named by the words beside it on its line
                    names[(name, i, j, k, part)] = frozenset(near[spans[k]])
                sign, body, unit = m.groups()
                try:
                    v = float(body.replace(",", "")) * (-1 if sign in ("−", "-") else 1)
                except ValueError:
                    continue
                entries.append((v, UNIT_WORDS.get(unit, unit), (name, i, j, k, part)))
                if column := column_of(head, line, m.start(), m.end()):
                    names[(name, i, j, k, part)] = names.get((name, i, j, k, part), frozenset()) | column
    return Pool.of(entries, labels, names)


STOP = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "its", "of", "on", "or", "the", "to", "with", "per", "all", "each", "one", "two", "not", "no", "this", "that", "than", "into", "out", "over", "under", "after", "before", "total", "mean"]) - {"mean"}


def word_parts(ws) -> frozenset:
    """Words, their parts at `_` and `-` and the parts joined (`mean_calibrated` -> mean_calibrated, mean, calibrated,
    meancalibrated; held-out -> heldout), and their singulars (steps -> step), stop words dropped."""
    out = set(ws) | {p for w in ws for p in re.split(r"[_-]", w) if p and p not in STOP} | {re.sub(r"[_-]", "", w) for w in ws}
    out |= {w[:-1] for w in out if len(w) > 3 and w.endswith("s") and not w.endswith("ss")}
    return frozenset(out | {ABBREVIATED[w] for w in out if w in ABBREVIATED})


# A code's short names, read as the prose's words: `train_chars` names characters, `vocab_size` a vocabulary.
ABBREVIATED = {"char": "character", "chars": "character", "tok": "token", "toks": "token", "vocab": "vocabulary",
               "zh": "chinese", "en": "english", "doc": "document", "docs": "document", "len": "length",
               "pct": "percent", "params": "parameter", "param": "parameter", "num": "number"}


def words(text: str) -> frozenset:
    "The lower-case words of `text` (a line, a figure key), code marks and possessives dropped: `first_piece`'s -> first_piece."
    return frozenset(w.lower().removesuffix("'s") for w in re.findall(r"[A-Za-z][\w'-]*[A-Za-z0-9]|[A-Za-z]", text)
                     if w.lower() not in STOP)


def key_words(key: str) -> frozenset:
    """The row a figure's key names: a table's row label (`pretrain/arms.csv:mean:zh` -> mean), or the parts of a
    manifest key between its part and its leaf (`eval.metrics.bpc.sft.zh` -> bpc, sft)."""
    if ":" in key:
        return words(key.split(":")[1]) if key.count(":") >= 2 else frozenset()
    parts = key.split(".")
    return words(" ".join(parts[2:-1]))


def label_flags(md: str, found: list, pools: dict) -> list:
    """(number, why) for the label rule: when the first cell of a table row, or the words that name a number in a
    sentence (`nearest_words`: `Qwen2 with 43.7% fewer`), name the row of an output table (the words before a line's
    first number) or of a figure (its key's row) that holds one of the row's or sentence's numbers, some source of the
    number is that row (unless some source of it names no row: a cited number, a bare line)."""
    out = []
    for s, e, row in segments(md):
        inside = [(n, [pools[n].words(h) for h in hits]) for n, hits in found if s <= n.start < e]
        rows = set().union(*(w for _, ws in inside for w in ws if w is not None))
        if row:
            head = words(md[s:e].strip().strip("|").split("|")[0].replace("`", ""))
            near = {n: head for n, _ in inside}
        else:
            near = nearest_words(md, s, e, [n for n, _ in inside])
        for n, ws in inside:
            named = near[n] & rows
            if named and ws and all(ws) and not any(w & named for w in ws):      # a source of no named row: no say
                out.append((n, f"no source of it is the row {', '.join(sorted(named))}"))
    return out


def stage_of(name: str) -> str:
    return re.sub(r"^\d+_", "", name)


def own_figures(figures: dict, notebook) -> dict:
    "The figures of the stage a chapter runs (`30_data` -> keys `data.…`, `data/…`, `pipeline.data.seconds`)."
    stage = stage_of(Path(notebook).stem)
    own = lambda k: k.startswith((f"{stage}.", f"{stage}/")) or k == f"pipeline.{stage}.seconds"
    return {k: v for k, v in figures.items() if own(k)}


def figure_pool(figures: dict) -> Pool:
    return Pool.of([(float(v), figure_unit(k), k) for k, v in figures.items()])


def source_path(source: str) -> Path:
    "A cited number's source: a file of this repository (`configs/…`), else a document under `../shared`."
    return ROOT/source if (ROOT/source).is_file() else SHARED/source


@lru_cache(maxsize=8)
def _cited_pool(text: str) -> Pool:
    entries, names, pins = [], {}, set()
    for e in yaml.safe_load(text) or []:
        number = str(e["number"]).replace(",", "")
        src = source_path(e["source"])
        said = frozenset(w.lower() for w in e.get("words", []))
        if e.get("pin"):
            pins.add((float(number), said))
        if not src.is_file():
            entries.append((float(number), ANY, None))
            continue
        for j, line in enumerate(src.read_text(encoding="utf-8", errors="replace").splitlines()):
            for k, m in enumerate(OUTPUT_NUMBER.finditer(line)):     # where, and with which unit, its source prints it
                if m.group(2).replace(",", "") == number:
                    entries.append((float(number), UNIT_WORDS.get(m.group(3), m.group(3)), (e["source"], -1, j, k)))
                    names[(e["source"], -1, j, k)] = names.get((e["source"], -1, j, k), frozenset()) | said
    return Pool.of(entries, names=names, pins=pins)


def cited_pool(path: Path = CITED) -> Pool:
    "The cited numbers, each with every unit its source prints it with (any unit if the source is not at hand)."
    return _cited_pool(Path(path).read_text(encoding="utf-8"))


def segments(md: str) -> list:
    """(start, end, is_table_row) of the sentences and table rows of markdown `md`: a table row is one line, a heading
    one line, and a sentence runs across the lines of its paragraph or list item to its full stop."""
    out, pos, para = [], 0, None

    def close(end):
        if para is None:
            return
        start = para
        for m in re.finditer(r"(?<=[.;!?。])\s+", md[para:end]):
            out.append((start, para + m.start(), False))
            start = para + m.end()
        if md[start:end].strip():
            out.append((start, end, False))

    for line in md.splitlines(keepends=True):
        table, heading = line.lstrip().startswith("|"), line.lstrip().startswith("#")
        if table or heading or not line.strip() or re.match(r"\s*(?:[-*+]|\d+\.)\s", line):   # a new block
            close(pos)
            para = None
            if table or heading:
                out.append((pos, pos + len(line), table))
            elif line.strip():
                para = pos
        elif para is None:
            para = pos
        pos += len(line)
    close(pos)
    return out


def sentence(md: str, i: int) -> str:
    "The sentence or table row of `md` around position `i`, on one line."
    s, e, _ = next((s for s in segments(md) if s[0] <= i < s[1]), (0, len(md), False))
    return " ".join(md[s:e].split()).strip("|-. ")


def index_blocks(md: str, names: set) -> list:
    """(start, end, named notebooks, named tables) of the blocks of an index cell: a block starts at the cell, at a
    heading and at a paragraph opening in bold, and holds the tables that follow its text."""
    starts = [0] + [m.start(1) for m in re.finditer(r"\n\s*\n(#|\*\*)", md) if m.start(1) > 0]
    out = []
    for s, e in zip(starts, starts[1:] + [len(md)]):
        text = md[s:e]
        out.append((s, e, {n for n in NOTEBOOK_NAME.findall(text) if n in names}, set(TABLE_NAME.findall(text))))
    return out


@dataclass(frozen=True)
class Flag:
    notebook: str
    cell: int
    number: str
    why: str
    sentence: str

    def __str__(self):
        return f"{self.notebook} cell {self.cell}: {self.number} ({self.why}) in: {self.sentence}"


@lru_cache(maxsize=64)
def _notebook(path: str, digest: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _digest(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def read_notebook(path: Path) -> dict:
    return _notebook(str(path), _digest(path))


@lru_cache(maxsize=64)
def _outputs(path: str, digest: str) -> Pool:
    return output_pool(_notebook(path, digest), Path(path).stem)


def notebook_outputs(path: Path) -> Pool:
    return _outputs(str(path), _digest(path))


@lru_cache(maxsize=8)
def _figures(path: str, mtime: int) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_figures(path: Path) -> dict:
    return _figures(str(path), Path(path).stat().st_mtime_ns)


def _kind(n: Number) -> tuple:
    return (n.unit, n.decimals > 0)


def _out_of_order(md: str, found: list, place, keep, where, what: str, reversed_in=None) -> list:
    """(number, why) for two neighbouring numbers of the same kind in one sentence or table row that every place holding
    both (`place(hit, n)` -> (place, position), or None) holds in the other order; `keep(a, b, row, place)` says which
    places count, `reversed_in(a, b, positions of a, positions of b)` what the other order is (by default: every `a`
    after every `b`)."""
    out = []
    for s, e, row in segments(md):
        inside = []
        for n, hits in found:
            if s <= n.start < e:
                at = {}
                for h in hits:
                    if (p := place(h, n)) is not None:
                        at.setdefault(p[0], []).append(p[1])
                inside.append((n, at))
        for kind in {_kind(n) for n, _ in inside}:
            same = [(n, at) for n, at in inside if _kind(n) == kind]
            for (a, la), (b, lb) in pairwise(same):
                common = {c for c in set(la) & set(lb) if keep(a, b, row, c)}
                rev = reversed_in or (lambda a, b, la, lb: min(la) > max(lb))
                if a.value != b.value and common and all(rev(a, b, la[c], lb[c]) for c in common):
                    out.append((b, f"stands before {a.text} in {what} {where(min(common))}"))
    return out


def order_flags(md: str, found: list, where) -> list:
    """(number, why) for the order rule: two neighbouring numbers of the same kind (unit, decimal or not) in one table
    row, or two neighbouring decimals of the same kind in one sentence, that an output line holds together stand in
    its order. `found` is [(Number, hits)] of the traced numbers."""
    line = lambda h, n: (line_of(h[2]), h[2][3]) if isinstance(h[2], tuple) and (h[2][1] != -1 or n.decimals) else None
    return _out_of_order(md, found, line, lambda a, b, row, c: row or a.decimals > 0, where, "output line")


LISTED = re.compile(r"\s*(?:/|,|and|, and|or|, or|to)\s*")      # what stands between two numbers of one list


def significant_digits(n: Number) -> int:
    "Significant digits as written: 0.05 -> 1, 16 -> 2, 93 GB -> 2, 46.7B -> 3, 0.599 -> 3, 1,456 -> 4."
    digits = re.sub(r"\D", "", n.text.split(" ")[0])
    return len(digits.lstrip("0")) or 1


def source_order_flags(md: str, found: list, where) -> list:
    """(number, why) for the order rule at the scale of an output: two neighbouring numbers of the same kind in one
    sentence or table row that one output (a cell's printed text) holds stand in that output's order (line by line,
    left to right), when each is written with at least 3 significant digits or the two are listed (only `/`, `,`,
    `and`, `or` or `to` between them); for listed numbers a cited document's order counts too."""
    listed = lambda a, b: LISTED.fullmatch(md[a.end:b.start]) is not None
    output = lambda h, n: (h[2][:2], h[2][2:4]) if isinstance(h[2], tuple) else None

    def keep(a, b, row, c):
        both = listed(a, b)
        return (both or (significant_digits(a) >= 3 and significant_digits(b) >= 3)) and (both or c[1] != -1)
    first = lambda a, b, la, lb: min(la) > min(lb) if listed(a, b) else min(la) > max(lb)   # a list: first mentions
    return _out_of_order(md, found, output, keep, where, "the output of", first)


def nearest_words(md: str, s: int, e: int, numbers: list) -> dict:
    """Number -> the words of the sentence `md[s:e]` that name it: each word goes to the nearest of `numbers` in its
    clause (between `,` `;` `: ` and brackets), or in the sentence if its clause has none; a number left with no word
    takes those of the number before it (`Qwen2 (151,936; 43.7%)`)."""
    out = {n: set() for n in numbers}
    if not numbers:
        return out
    def gap(n, a, b):                                  # a name set to a number (`alpha = 128`) stands next to it
        return (0 if re.fullmatch(r"\s*=\s*", md[b:n.start]) else n.start - b) if b <= n.start else \
            a - n.end if a >= n.end else 0
    text = list(md[s:e])
    for n in numbers:                                  # a number's own unit (93 GB, 30B-token) names nothing
        text[n.start - s:n.end - s] = " "*(n.end - n.start)
    text = "".join(text)
    clause = [0]
    for i, ch in enumerate(text):
        clause.append(clause[-1] + (ch in ",;()[]" or text[i:i + 2] in (": ", ":\n")))
    at = lambda i: clause[i - s]                       # the clause of a position of md
    for m in re.finditer(r"[A-Za-z][\w'-]*[A-Za-z0-9]|[A-Za-z]", text):
        a, b = s + m.start(), s + m.end()
        mine = [n for n in numbers if at(n.start) == at(a)] or numbers
        n = min(mine, key=lambda n: gap(n, a, b))
        out[n] |= word_parts(words(m.group()))
    for x, y in pairwise(sorted(numbers, key=lambda n: n.start)):
        if not out[y]:
            out[y] = set(out[x])
    return out


def must_be_named(n: Number, hits: list, names: list) -> bool:
    """Whether the naming rule holds `n` to a source named beside it: a number of at most 2 significant digits, a number
    a cited entry with `words` holds, and a whole number without a unit, a percentage or a signed number unless a cited
    entry without `words` holds it (a published figure, named by its document)."""
    cited = [w for h, w in zip(hits, names) if isinstance(h[2], tuple) and h[2][1] == -1]
    counted = (n.decimals == 0 and n.unit is None) or n.unit == "%" or n.signed
    return significant_digits(n) <= 2 or any(cited) or (counted and all(cited))


def naming_flags(md: str, found: list, pools: dict) -> list:
    """(number, why) for the naming rule:
    - a number `must_be_named` has a source named by the words that name it in its sentence (`nearest_words`; numbers
      listed together share them; in a table row, also the row's first cell): an output number named by the words
      beside it on its line or by its table column's header (a line of numbers alone, by the last line of its cell's
      code), a figure whose key has one of those words, a cited number whose `words` has one, or a bare line of
      numbers;
    - a number that only cited numbers with `words` hold stands nearest to one of those words in its sentence (25,000
      "added" and 57,000 "in all" swapped are caught);
    - a number with the words of a pinned cited setting (`pin: true`) right beside it is that setting (`temperature
      0.8`; `5% warmup` is 0.05)."""
    out = []
    for s, e, row in segments(md):
        inside = [(n, hits) for n, hits in found if s <= n.start < e]
        own = nearest_words(md, s, e, [n for n, _ in inside])
        near = dict(own)
        for a, b in pairwise(sorted(near, key=lambda n: n.start)):   # a list (18,524 / 960 paragraphs) shares its names
            if LISTED.fullmatch(md[a.end:b.start]) and _kind(a) == _kind(b):
                near[a] = near[b] = near[a] | near[b]
        if row:                                           # in a table, the row's first cell names each of its numbers
            head = word_parts(words(md[s:e].strip().strip("|").split("|")[0].replace("`", " ")))
            near = {n: w | head for n, w in near.items()}
        for n, hits in inside:
            beside = word_parts(words(md[max(s, n.start - 20):n.start] + " " + md[n.end:min(e, n.end + 12)]))
            pinned = {v for v, said in pools[n].pins if said & own[n] & beside}   # `temperature 0.8`, `alpha = 128`
            as_written = [n.value] + ([n.value/100] if n.unit == "%" else [])          # 5% is 0.05
            if pinned and not any(abs(x - v) <= 0.5*10**-n.decimals*(1 + 1e-9) for v in pinned for x in as_written):
                out.append((n, f"the words beside it name a cited setting of {' or '.join(f'{v:g}' for v in pinned)}"))
                continue
            names = [pools[n].naming(h) for h in hits]
            if must_be_named(n, hits, names) and not any(w is None or w & near[n] for w in names):
                out.append((n, "no source of it is named beside it (an output line's words, a figure's key, "
                               "a cited number's `words`)"))
            elif all(isinstance(h[2], tuple) and h[2][1] == -1 and w for h, w in zip(hits, names)) and not any(
                    w & near[n] for w in names):
                out.append((n, f"none of its cited words ({', '.join(sorted(set().union(*names)))}) stands nearest "
                               "to it"))
    return out


def check_notebook(path, nbs=None, figures_path=None, cited_path=None) -> list:
    "The `Flag`s of the notebook at `path`: numbers in its prose no source of it holds as written, or out of order."
    path = Path(path)
    nbs = Path(nbs or path.parent)
    figures = read_figures(figures_path or nbs/"figures.json")
    cites = cited_pool(cited_path or nbs/"cited_numbers.yaml")
    nb, name = read_notebook(path), path.stem
    names = {p.stem for p in nbs.glob("*.ipynb")}

    @cache
    def sources(notebooks: frozenset, tables: frozenset) -> Pool:
        pool = cites
        for n in notebooks:
            pool = pool + notebook_outputs(nbs/f"{n}.ipynb") + figure_pool(own_figures(figures, n))
        for t in tables:
            pool = pool + figure_pool({k: v for k, v in figures.items() if k.startswith(f"{t}:")})
        return pool

    own = sources(frozenset({name}), frozenset()) if name != "index" else None
    cells = [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"]
    offsets, text = [], ""
    for i, md in cells:                                   # the index's blocks run across cells
        offsets.append(len(text))
        text += md + "\n\n"
    blocks = index_blocks(text, names) if own is None else []
    flags = []
    for (i, md), off in zip(cells, offsets):
        found, pools = [], {}
        for n in measured_numbers(md):
            if own is not None:
                pool, src = own, "its notebook's outputs, its stage's figures"
            else:
                _, _, notebooks, tables = next(b for b in blocks if b[0] <= n.start + off < b[1])
                pool = sources(frozenset(notebooks | {"index"}), frozenset(tables))
                src = f"the index's outputs, the notebooks its block names ({', '.join(sorted(notebooks)) or 'none'})"
            hits = pool.hits(n)
            if hits:
                found.append((n, hits))
                pools[n] = pool
            else:
                flags.append(Flag(name, i, n.text, f"not in {src} nor the cited numbers", sentence(md, n.start)))
        where = lambda l: f"{l[0]} cell {l[1]}"
        flags += [Flag(name, i, n.text, why, sentence(md, n.start)) for n, why in order_flags(md, found, where)]
        flags += [Flag(name, i, n.text, why, sentence(md, n.start)) for n, why in label_flags(md, found, pools)]
        flags += [Flag(name, i, n.text, why, sentence(md, n.start)) for n, why in source_order_flags(md, found, where)]
        flags += [Flag(name, i, n.text, why, sentence(md, n.start)) for n, why in naming_flags(md, found, pools)]
    return list(dict.fromkeys(flags))


def check_book(nbs=NBS) -> list:
    "The `Flag`s of every notebook in `nbs` (see the module's docstring for the rules)."
    return [f for p in sorted(Path(nbs).glob("*.ipynb")) for f in check_notebook(p, nbs)]


def cited() -> list:
    return yaml.safe_load(CITED.read_text(encoding="utf-8")) or []


def flagged(rule, pool: Pool, md: str) -> list:
    "The numbers of `md` one rule (`order_flags`, `source_order_flags`, `label_flags`, `naming_flags`) flags against `pool`."
    found = [(n, pool.hits(n)) for n in measured_numbers(md)]
    extra = str if rule in (order_flags, source_order_flags) else {n: pool for n, _ in found}
    return [n.text for n, _ in rule(md, found, extra)]


def test_figures_and_cited_list_are_readable():
    figures = json.loads(FIGURES.read_text(encoding="utf-8"))
    assert figures and all(isinstance(v, (int, float)) for v in figures.values())
    assert list(figures) == sorted(figures), "nbs/figures.json is written with sorted keys (cmixtral adopt)"
    assert all({"number", "source"} <= set(e) <= {"number", "source", "words", "pin"} for e in cited()), (
        "cited_numbers.yaml: entries are {number, source} and maybe words and pin")


def test_every_measured_number_in_prose_is_traced():
    flags = check_book(NBS)
    assert not flags, (
        f"{len(flags)} numbers in prose that no source of their notebook holds as written (its outputs, its stage's "
        "figures in nbs/figures.json, nbs/cited_numbers.yaml; for the index, those of the notebooks its block names), "
        "or that stand out of their output's order: correct them to the measured value, cite their source, or print "
        "them from the run:\n" + "\n".join(map(str, flags)))


def test_cited_numbers_are_in_their_sources():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the reference documents) is not beside this clone")
    missing = []
    for e in cited():
        src = source_path(e["source"])
        if not src.is_file():
            missing.append(f"{e['number']}: {e['source']} exists neither in this repository nor under {SHARED}")
            continue
        numbers = {n.replace(",", "") for n in re.findall(r"\d+(?:,\d{3}(?!\d))*(?:\.\d+)?", src.read_text(encoding="utf-8", errors="replace"))}
        if str(e["number"]).replace(",", "") not in numbers:
            missing.append(f"{e['number']}: not found in {e['source']}")
    assert not missing, "nbs/cited_numbers.yaml entries not found in their source:\n" + "\n".join(missing)


@pytest.mark.parametrize("md,found", [
    ("C-Eval 52.08 and −22.6% and 214,189 tokens, 606M tokens, 3500 chars", ["52.08", "−22.6%", "214,189", "606M", "3500"]),
    ("4.57.1, v2, transformers 4.57, in 2024, `0.03` [x](https://a.b/1.25) md5 8e232115d757bb99, 7 and 4 cores", []),
    ("Zhao et al. (2024, arXiv:2401.01055), seed 004, 8x7B, U+3001", []),
    ("```\n1.5\n```\nhttps://x.org/v/3.14 <img width=\"600\"> $$0.5$$ zh_c3500 ids 1,2,3 U+3001 Qwen2-1.5B seed 004", []),
    ("a 16-bit float, 32-bit ids", []),
    ("42 arms, 25% at chance, 5% of it, +4.6% and -3, 446 MiB, 13.1 s, 2.4 min, 2.7 GB, 12 items", ["42", "25%", "5%", "+4.6%", "-3", "446 MiB", "13.1 s", "2.4 min", "2.7 GB", "12"]),
])
def test_what_counts_as_a_measured_number(md, found):
    assert [m.text for m in measured_numbers(md)] == found


def test_signs_units_and_percentages_are_read():
    n = {m.text: m for m in measured_numbers("−23%, -0.5, +2.0%, 446 MiB, 446 GiB, 13.1s, 606M, 41.7 points, 2 B")}
    assert (n["−23%"].value, n["−23%"].unit, n["-0.5"].value, n["+2.0%"].value) == (-23, "%", -0.5, 2.0)
    assert (n["446 MiB"].unit, n["446 GiB"].unit, n["13.1s"].unit, n["606M"].unit, n["41.7 points"].unit) == (
        "MiB", "GiB", "s", "M", "pt")
    assert "2 B" not in n                                   # a lone B is no unit, and 2 is a small count


def test_rounding_formatting_signs_units_and_percentages_match():
    pool = output_pool({"cells": [{"outputs": [{"output_type": "stream", "text": (
        "zh_vs_base -0.2321\n48.31 214,189 7.3849 0.0204\npeak 446 MiB, 13.1 s; 41.7%\n")}]}]}, "x") + \
        figure_pool({"eval.metrics.acc": 0.25, "codec/codec.csv:a:fewer_than_base_pct": 37.2, "data.timings.total": 21.7})
    hit = lambda text: bool(pool.hits(next(measured_numbers(text))))
    assert all(map(hit, ["48.3", "214,189", "7.385", "−23.2%", "-23%", "446 MiB", "13.1 s", "41.7%", "25%",
                         "37.2%", "21.7 s", "2.0%", "about 48"]))
    assert not any(map(hit, ["7.39", "48.4", "23.2%", "+23.2%", "446 GiB", "13.1 min", "41.7 points", "41.5%",
                             "37.2 s", "21.7 min", "25 s", "−48.3", "−2.0%", "446", "13.1", "48"]))


def test_scale_letters_and_cited_units():
    pool = output_pool({"cells": [{"outputs": [{"output_type": "stream", "text": "606M tokens, 780 M\n606000000\n"}]}]}, "x")
    hit = lambda text: bool(pool.hits(next(measured_numbers(text))))
    assert hit("606M") and hit("780M") and not hit("606B") and not hit("606k")


def test_stage_figures_and_index_blocks():
    figures = {"data.metrics.x": 0.57, "vocab/grid.csv:1:alp": 4.2, "pipeline.data.seconds": 21.7, "fresh.csv:a": 1.0}
    assert list(own_figures(figures, Path("nbs/30_data.ipynb"))) == ["data.metrics.x", "pipeline.data.seconds"]
    assert own_figures(figures, Path("nbs/95_docs.ipynb")) == {}
    md = ("## Head\n\nIntro 1.5.\n\n**Data.** 0.617 per character (`30_data`).\n\n| a | 0.617 |\n\n"
          "**Pretraining** in `nbs/40_pretrain`, timed in `bench/out/fresh.csv`.")
    blocks = index_blocks(md, {"30_data", "40_pretrain"})
    assert [(b[2], b[3]) for b in blocks] == [(set(), set()), ({"30_data"}, set()), ({"40_pretrain"}, {"fresh.csv"})]
    assert "| a | 0.617 |" in md[blocks[1][0]:blocks[1][1]]


def test_order_within_a_row_or_sentence():
    nb = {"cells": [{"outputs": [{"output_type": "stream", "text": "normal 7.4521 2.4129 0.082\nmean 7.3850 2.3330 0.046\n"}]}]}
    pool = output_pool(nb, "x")

    flags = partial(flagged, order_flags, pool)
    assert flags("| mean | 7.39 | 2.333 |\n| normal | 7.45 | 2.413 |\n") == []
    assert flags("| mean | 2.333 | 7.39 |\n") == ["7.39"]                       # swapped within a row
    assert flags("Mean ends at 7.39 on Chinese and 2.333 on English.") == []
    assert flags("Mean ends at 2.333 on English and 7.39 on Chinese.") == ["7.39"]
    assert flags("Of 7452 and 7385 the first; | x | 7.39 | 4.6% | 2.333 |") == []    # integers in prose, kinds apart


def test_a_table_row_holds_its_own_rows_numbers():
    nb = {"cells": [{"outputs": [{"output_type": "stream", "text": "normal 7.4521 2.4129 0.082\nmean 7.3850 2.3330 0.046\n"}]}]}
    pool = output_pool(nb, "x") + figure_pool({"pretrain/arms.csv:first_piece:zh": 7.4131, "pretrain.metrics.x": 2.2745})

    flags = partial(flagged, label_flags, pool)
    assert flags("| `mean` init | 7.39 | 2.333 (+4.6%) |\n| `normal` init | 7.45 | 2.413 |\n| first_piece | 7.41 | 2.275 |") == []
    assert flags("| `normal` init | 7.39 | 2.413 |\n| `mean` init | 7.45 | 2.333 |\n") == ["7.39", "7.45"]   # rows swapped
    assert flags("| first_piece | 7.41 | 7.45 |") == ["7.45"]                   # a figure's row label
    assert flags("| tokenizer | 7.45 | 2.413 |") == []                          # a first cell that names no row


def test_a_sentence_runs_across_lines_and_stops_at_its_full_stop():
    md = "Mean ends at\n7.39 on Chinese. Normal at 7.45;\nbase 9.6.\n\n- an item\n  over two lines. Next\n| a | 1.5 |\n# 2.5 head\n"
    assert [md[s:e].strip() for s, e, _ in segments(md)] == [
        "Mean ends at\n7.39 on Chinese.", "Normal at 7.45;", "base 9.6.", "- an item\n  over two lines.", "Next",
        "| a | 1.5 |", "# 2.5 head"]


def test_output_order_holds_across_an_outputs_lines():
    pool = output_pool({"cells": [{"outputs": [{"output_type": "stream", "text": "normal 7.4521\nmean 7.3850\n"}]},
                                  {"outputs": [{"output_type": "stream", "text": "levels 2000\nnext 2500\nx 16\ny 12\n"}]}]}, "x")

    flags = partial(flagged, source_order_flags, pool)
    assert flags("Normal ends at 7.452 and mean\nat 7.385.") == []
    assert flags("Normal ends at 7.385 and mean\nat 7.452.") == ["7.452"]              # the two lines' values swapped
    assert flags("Levels 2,000 / 2,500.") == [] and flags("Levels 2,500 / 2,000.") == ["2,000"]
    assert flags("After 12 steps it saves, and after 16 again.") == []          # 2 digits, not listed: prose order


def test_a_low_precision_number_needs_a_source_named_beside_it(tmp_path):
    cites = tmp_path/"cited.yaml"
    (tmp_path/"src.txt").write_text("added 25,000 tokens, a final 57,000\n")
    cites.write_text(f"- {{number: '25,000', source: {tmp_path/'src.txt'}, words: [added, new]}}\n"
                     f"- {{number: '57,000', source: {tmp_path/'src.txt'}, words: [final, vocabulary]}}\n")
    pool = output_pool({"cells": [{"outputs": [{"output_type": "stream",
                                                "text": "temperature 0.8\ntop_p 0.9\nsteps 12\n"}]}]}, "x") + \
        cited_pool(cites)

    flags = partial(flagged, naming_flags, pool)
    assert flags("Sampling at temperature 0.8 and top-p 0.9, 12 steps.") == []
    assert flags("Sampling at temperature 0.9 and top-p 0.8, 12 steps.") == ["0.9", "0.8"]     # two settings swapped
    assert flags("Sampling at temperature 0.8 and top-p 0.9, 12 layers.") == ["12"]            # named by no source
    assert flags("25,000 added pieces make a final vocabulary of 57,000.") == []
    assert flags("57,000 added pieces make a final vocabulary of 25,000.") == ["57,000", "25,000"]   # swapped


def test_a_table_column_names_its_numbers():
    text = "    char_level  zh_vocab_size\n0         3500          16000\n"          # pandas prints a frame so
    html = ("<table><thead><tr><th></th><th>char_level</th><th>zh_vocab_size</th></tr></thead>"
            "<tbody><tr><th>0</th><td>3500</td><td>16000</td></tr></tbody></table>")
    for out in ({"output_type": "stream", "text": text}, {"output_type": "display_data", "data": {"text/html": html}}):
        flags = partial(flagged, naming_flags, output_pool({"cells": [{"outputs": [out]}]}, "x"))
        assert flags("The knee sits at a size of 16,000 with 3,500 single characters.") == []
        assert flags("The knee sits at a size of 3,500 with 16,000 single characters.") == ["3,500", "16,000"]


def test_the_words_beside_an_output_number_name_it_not_its_whole_line():
    pool = output_pool({"cells": [{"outputs": [{"output_type": "stream", "text": (
        "the highest knee is level 3500 at 16000 pieces; char_levels=[2000, 2500]\n")}]}]}, "x")
    flags = partial(flagged, naming_flags, pool)
    assert flags("It adds 16,000 pieces at level 3,500; levels 2,000 and 2,500.") == []
    assert flags("It adds 3,500 pieces at level 16,000; levels 2,000 and 2,500.") == ["3,500", "16,000"]
    assert flags("It adds 2,500 pieces.") == ["2,500"]             # a list's item, named by the one before it


def test_a_bare_printed_number_is_named_by_the_code_that_printed_it():
    pool = output_pool({"cells": [{"cell_type": "code", "source": "len(tok)",
                                   "outputs": [{"output_type": "execute_result", "data": {"text/plain": "32000"}}]}]},
                       "x")
    flags = partial(flagged, naming_flags, pool)
    assert flags("The tokenizer has 32,000 tokens.") == []
    assert flags("Training took 32,000 steps.") == ["32,000"]


def test_a_pinned_setting_fixes_the_number_beside_its_name(tmp_path):
    (tmp_path/"src.txt").write_text("temperature 0.8, top_p 0.9, warmup_ratio 0.05\n")
    cites = tmp_path/"cited.yaml"
    cites.write_text(f"- {{number: '0.8', source: {tmp_path/'src.txt'}, words: [temperature], pin: true}}\n"
                     f"- {{number: '0.05', source: {tmp_path/'src.txt'}, words: [warmup], pin: true}}\n")
    pool = cited_pool(cites) + output_pool({"cells": [{"outputs": [{"output_type": "stream",
                                                                     "text": "temperature 0.7 (a sweep)\n"}]}]}, "x")
    flags = partial(flagged, naming_flags, pool)
    assert flags("Sampling at temperature 0.8 after 5% warmup.") == []
    assert flags("Sampling at temperature 0.7 after 6% warmup.") == ["0.7", "6%"]


def test_a_sentence_that_names_a_row_holds_that_rows_number():
    pool = figure_pool({"codec/codec.csv:Qwen2:fewer_pct": 43.7, "codec/codec.csv:DeepSeek:fewer_pct": 41.8})

    flags = partial(flagged, label_flags, pool)
    assert flags("Then come Qwen2 with 43.7% fewer, DeepSeek with 41.8% fewer.") == []
    assert flags("Then come Qwen2 with 41.8% fewer, DeepSeek with 43.7% fewer.") == ["41.8%", "43.7%"]


def test_listed_numbers_keep_the_order_of_their_first_mentions():
    pool = output_pool({"cells": [{"outputs": [{"output_type": "stream",
                                                "text": "level 2000\nlevel 2500\nsize 2000\n"}]}]}, "x")

    flags = partial(flagged, source_order_flags, pool)
    assert flags("Levels 2,000 / 2,500.") == []
    assert flags("Levels 2,500 / 2,000.") == ["2,000"]                      # 2000 again after 2500 hides no swap


def test_a_word_names_the_nearest_number_of_its_clause():
    md = "DeepSeek-LLM with 41.8% fewer (102,400), Baichuan with 37.2% fewer; Qwen2 (151,936; 43.7%)"
    near = {n.text: w for n, w in nearest_words(md, 0, len(md), list(measured_numbers(md))).items()}
    assert "baichuan" in near["37.2%"] and "baichuan" not in near["102,400"]
    assert "qwen2" in near["43.7%"]                                         # a number with no word of its own
