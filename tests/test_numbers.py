"""Every measured-looking number in the notebooks' prose is traced: to an output of the same notebook, to the run's
figures (`nbs/figures.json`, written by `cmixtral adopt`), or to a published source (`nbs/cited_numbers.yaml`)."""
import bisect, json, re, subprocess
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/"nbs"


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

# Prose that holds no measured number: code, link targets and URLs, HTML tags, and display formulas.
NOT_PROSE = re.compile(r"```.*?```|~~~.*?~~~|`[^`\n]*`|\]\([^)\s]*(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*\S+"
                       r"|<https?://[^>]*>|https?://\S+|<[^>\n]+>|\$\$.*?\$\$", re.S | re.M)
# A number as prose writes it: optional `v`, digits with thousands separators, decimals, a unit, a percent sign.
# Not a number: part of a word or path (`zh_c3500`, `Qwen2-1.5B`), a code point (U+3001).
PROSE_NUMBER = re.compile(r"(?<![\w.,/\\#@])(?<!\w-)(?<!U\+)(v?)(\d+(?:,\d{3}(?!\d))*(?:\.\d+)*)([A-Za-z]*)(%?)(?![\w/])")
SCALE = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}     # 606M tokens, 46.7B parameters
UNITS = {"", "x", "s", "ms", "h", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", *SCALE}
# A number right after a package's name is its version: transformers 4.57, Python 3.11.
PACKAGES = re.compile(r"(?:python|transformers|torch|pytorch|peft|bitsandbytes|tokenizers|sentencepiece|datasets"
                      r"|lm-eval|lm_eval|pip|deepspeed|nbdev|accelerate|trl|numpy|pandas|cuda|matplotlib|license|slurm)\s*(?:>=|==|<)?\s*$", re.I)
# A number in an output: thousands separators or not, signs, exponents.
OUTPUT_NUMBER = re.compile(r"\d{1,3}(?:,\d{3}(?!\d))+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+")


def measured_numbers(md: str):
    "(text, value, decimals, is_percent, unit scale, start) of each measured-looking number in markdown `md`."
    masked = NOT_PROSE.sub(lambda m: " "*len(m.group()), md)
    for m in PROSE_NUMBER.finditer(masked):
        v, body, unit, pct = m.groups()
        if v or body.count(".") > 1 or unit not in UNITS or PACKAGES.search(masked[max(0, m.start() - 20):m.start()]):
            continue                                                      # versions, identifiers, hex
        digits, _, frac = body.replace(",", "").partition(".")
        if not frac and (len(digits) < 3 or digits.startswith("0")):   # small, or a name (seed 004)
            continue
        if not frac and "," not in body and len(digits) == 4 and 1900 <= int(digits) <= 2100:   # a year
            continue
        yield m.group(), float(body.replace(",", "")), len(frac), bool(pct), SCALE.get(unit, 1.0), m.start()


def output_values(nb: dict) -> list:
    "The numbers in the outputs of `nb` (text/plain, text/markdown, text/html, streams), sorted, as absolute values."
    texts = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            texts.append(o.get("text", ""))
            texts += [o.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown", "text/html")]
    text = " ".join(t if isinstance(t, str) else "".join(t) for t in texts)
    return sorted(abs(float(n.replace(",", ""))) for n in OUTPUT_NUMBER.findall(text))


def matches(values: list, value: float, decimals: int, percent: bool = False, scale: float = 1.0) -> bool:
    """Whether a sorted list of absolute `values` holds `value` as prose rounds it: as written, times its unit's `scale`
    (606M: 606e6), and as a fraction if a percentage (23.1%: 0.231)."""
    tol = 0.5*10**-decimals*(1 + 1e-9)
    for target, per in [(value, 1.0), (value*scale, 1/scale)] + ([(value/100, 100.0)] if percent else []):
        i = bisect.bisect_left(values, target - tol/per)
        if i < len(values) and values[i] <= target + tol/per:
            return True
    return False


def sentence(md: str, i: int) -> str:
    "The sentence of `md` around position `i`, on one line."
    start = max([md.rfind(s, 0, i) for s in (". ", "\n\n", "。", "! ", "? ", "\n|", "\n- ")] + [-1])
    ends = [j for j in (md.find(s, i) for s in (". ", ".\n", "\n\n", "。", "\n|")) if j >= 0]
    return " ".join(md[start + 1:min(ends, default=len(md)) + 1].split()).lstrip("|-. ")


def cited() -> list:
    return yaml.safe_load(CITED.read_text(encoding="utf-8")) or []


def test_figures_and_cited_list_are_readable():
    figures = json.loads(FIGURES.read_text(encoding="utf-8"))
    assert figures and all(isinstance(v, (int, float)) for v in figures.values())
    assert list(figures) == sorted(figures), "nbs/figures.json is written with sorted keys (cmixtral adopt)"
    assert all(set(e) == {"number", "source"} for e in cited()), "cited_numbers.yaml: entries are {number, source}"


def significant_digits(text: str) -> int:
    "How many significant digits a number as prose writes it shows: 0.57 has 2, 48.3% has 3, 1,200 has 4."
    return len(re.sub(r"\D", "", text).lstrip("0"))


def own_figures(figures: dict, notebook: Path) -> list:
    """The figures of the stage a chapter runs (`30_data` -> keys `data.…`, `data/…`, `pipeline.data.seconds`); for the
    index, which sums up every stage, all of them."""
    if notebook.stem == "index":
        return [abs(float(v)) for v in figures.values()]
    stage = re.sub(r"^\d+_", "", notebook.stem)
    own = lambda k: k.startswith((f"{stage}.", f"{stage}/")) or k == f"pipeline.{stage}.seconds"
    return [abs(float(v)) for k, v in figures.items() if own(k)]


def test_every_measured_number_in_prose_is_traced():
    """A number in prose is traced if an output of its notebook, a figure or a cited number holds it. A short one (fewer
    than 3 significant digits: 0.57, 4.2, 0.9%) matches some figure among thousands by chance, so it must be in an
    output of its notebook, in the cited list, or among the figures of the chapter's own stage."""
    figures = json.loads(FIGURES.read_text(encoding="utf-8"))
    cites = [float(str(e["number"]).replace(",", "")) for e in cited()]
    everything = [abs(float(v)) for v in figures.values()] + cites
    untraced = []
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text(encoding="utf-8"))
        outputs = output_values(nb)
        values, close = sorted(everything + outputs), sorted(cites + outputs + own_figures(figures, p))
        for i, c in enumerate(nb["cells"]):
            if c["cell_type"] != "markdown":
                continue
            md = "".join(c["source"])
            for text, value, decimals, percent, scale, at in measured_numbers(md):
                line = f"{p.name} cell {i}: {text} in: {sentence(md, at)}"
                pool = close if significant_digits(text) < 3 else values
                if not matches(pool, value, decimals, percent, scale) and line not in untraced:
                    untraced.append(line)
    assert not untraced, (
        "numbers in prose that no output of their notebook, nbs/figures.json nor nbs/cited_numbers.yaml holds "
        "(correct them to the measured value, cite their source, or point at the output):\n" + "\n".join(untraced))


def test_cited_numbers_are_in_their_sources():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the reference documents) is not beside this clone")
    missing = []
    for e in cited():
        src = SHARED/e["source"]
        if not src.is_file():
            missing.append(f"{e['number']}: {e['source']} does not exist under {SHARED}")
            continue
        numbers = {n.replace(",", "") for n in re.findall(r"\d+(?:,\d{3}(?!\d))*(?:\.\d+)?", src.read_text(encoding="utf-8", errors="replace"))}
        if str(e["number"]).replace(",", "") not in numbers:
            missing.append(f"{e['number']}: not found in {e['source']}")
    assert not missing, "nbs/cited_numbers.yaml entries not found in their source:\n" + "\n".join(missing)


@pytest.mark.parametrize("md,found", [
    ("C-Eval 52.08 and −22.6% and 214,189 tokens, 606M tokens, 3500 chars", ["52.08", "22.6%", "214,189", "606M", "3500"]),
    ("4.57.1, v2, transformers 4.57, in 2024, `0.03` [x](https://a.b/1.25) md5 8e232115d757bb99, 42 and 7", []),
    ("```\n1.5\n```\nhttps://x.org/v/3.14 <img width=\"600\"> $$0.5$$ zh_c3500 ids 1,2,3 U+3001 Qwen2-1.5B seed 004", []),
])
def test_what_counts_as_a_measured_number(md, found):
    assert [m[0].lstrip("−-") for m in measured_numbers(md)] == found


def test_short_numbers_need_a_close_source():
    assert [significant_digits(t) for t in ("0.57", "4.2", "0.9%", "48.3%", "1,200", "7.4003")] == [2, 2, 1, 3, 4, 5]
    figures = {"data.metrics.x": 0.57, "vocab/grid.csv:1:alp": 4.2, "pipeline.data.seconds": 21.7, "fresh.csv:a": 1.0}
    assert own_figures(figures, Path("nbs/30_data.ipynb")) == [0.57, 21.7]
    assert own_figures(figures, Path("nbs/95_docs.ipynb")) == []
    assert len(own_figures(figures, Path("nbs/index.ipynb"))) == 4


def test_rounding_formatting_and_percentages_match():
    vals = sorted([0.231, 48.31, 214189.0, 7.3849, 0.0204])
    assert matches(vals, 48.3, 1, False) and matches(vals, 23.1, 1, True) and matches(vals, 214189, 0, False)
    assert matches(vals, 7.385, 3, False) and matches(vals, 2.0, 1, True) and matches(vals, 0.214, 3, scale=1e6)
    assert not matches(vals, 7.39, 3, False) and not matches(vals, 23.1, 1, False) and not matches(vals, 48.4, 1, False)
