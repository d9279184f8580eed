"The docs site (mkdocs-material) in a real browser (Debian's chromium, driven by Playwright), and the README."
import html, re, shutil, subprocess
from pathlib import Path
import pytest
from cmixtral.docs import CJK_FAMILY, build_site, cjk_chars, cjk_font_path, readme_text, use_cjk_font

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOKS = sorted((ROOT/"nbs").glob("*.ipynb"), key=lambda p: (p.stem != "index", p.name))
PAGES = [f"{p.stem}.html" for p in NOTEBOOKS]
SENTENCE = "中国人民的日报。"     # characters the book uses, so the subset has them

def test_readme_is_generated_from_index_notebook():
    assert (ROOT/"README.md").read_text(encoding="utf-8") == readme_text(ROOT/"nbs"/"index.ipynb"), \
        "README.md is stale: run `cmixtral readme` after editing nbs/index.ipynb"

def machine_paths(nb_path) -> list[str]:
    "Absolute paths of this machine (checkout, home, Python, temporary folders) in the text outputs of a notebook."
    import json, os, sys
    roots = {str(ROOT), os.path.expanduser("~"), sys.prefix, "/tmp/", "/work/", "/home/"}
    found = []
    for i, c in enumerate(json.loads(nb_path.read_text(encoding="utf-8"))["cells"]):
        for o in c.get("outputs", []):
            texts = [o.get("text", "")] + [v for k, v in o.get("data", {}).items() if k.startswith("text/")]
            for t in texts:
                t = "".join(t)
                found += [f"{nb_path.name} cell {i}: {r}" for r in sorted(roots) if r in t]
    return found

def test_no_committed_output_shows_a_path_of_the_machine_that_ran_it(tmp_path):
    assert [f for nb in NOTEBOOKS for f in machine_paths(nb)] == []
    planted = tmp_path/"x.ipynb"
    planted.write_text('{"cells": [{"outputs": [{"output_type": "stream", "text": ["saved in %s/runs/tiny"]}]}]}' % ROOT)
    assert f"x.ipynb cell 0: {ROOT}" in machine_paths(planted)

def test_matplotlib_draws_chinese_with_the_book_font():
    import warnings
    import matplotlib
    import matplotlib.pyplot as plt
    with matplotlib.rc_context(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert use_cjk_font() == CJK_FAMILY
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.set_xlabel(SENTENCE)
        ax.set_title("人民日报 People's Daily")
        fig.canvas.draw()
        plt.close(fig)
    assert not [str(w.message) for w in caught if "missing from font" in str(w.message)]

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_site(tmp_path_factory.mktemp("site")/"_site", ROOT)

@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed for this test (make deps installs it)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()

class Tab:
    "A browser tab that records script errors and every request that leaves the site's folder."
    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors, self.remote = [], []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)

    def _request(self, r):
        if not r.url.startswith(("file:", "data:", "blob:", "about:")):
            self.remote.append(r.url)

    def open(self, site:Path, name:str):
        resp = self.page.goto((site/name).as_uri())
        assert resp is None or resp.ok, name
        self.page.evaluate("document.fonts.ready.then(() => true)")
        return self.page

    def hrefs(self, selector:str) -> list:
        return self.page.locator(selector).evaluate_all("as => as.map(a => a.getAttribute('href'))")

@pytest.fixture
def tab(browser):
    t = Tab(browser)
    yield t
    t.page.close()

BROKEN_IMAGES = ("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                 ".map(i => i.src.slice(-60))")
MISSING_TARGETS = ("Array.from(document.querySelectorAll('nav.md-nav--secondary a.md-nav__link'))"
                   ".map(a => a.getAttribute('href').slice(1)).filter(id => !document.getElementById(id))")
UNSCROLLABLE_CODE = ("Array.from(document.querySelectorAll('article pre'))"
                     ".filter(p => p.scrollWidth > p.clientWidth + 1)"
                     ".filter(p => !['auto', 'scroll'].includes(getComputedStyle(p).overflowX)"
                     " && !['auto', 'scroll'].includes(getComputedStyle(p.parentElement).overflowX))"
                     ".map(p => p.textContent.slice(0, 60))")

def test_every_notebook_is_a_page_that_loads_in_chromium(site, tab):
    assert sorted(p.name for p in site.glob("*.html") if p.name != "404.html") == sorted(PAGES)
    for i, name in enumerate(PAGES):
        page = tab.open(site, name)
        title = page.locator("article h1")
        assert title.count() == 1 and title.inner_text().strip(), f"{name}: no title"
        assert not page.evaluate(BROKEN_IMAGES), f"{name}: images failed to load"
        sidebar = tab.hrefs("nav.md-nav--primary > ul > li > a")
        assert sidebar == PAGES, f"{name}: sidebar not in notebook order"
        assert tab.hrefs("a.md-footer__link--prev") == PAGES[i - 1:i][:1], f"{name}: previous link"
        assert tab.hrefs("a.md-footer__link--next") == PAGES[i + 1:i + 2], f"{name}: next link"
        assert not page.evaluate(MISSING_TARGETS), f"{name}: table of contents links to missing headings"
        assert not page.evaluate(UNSCROLLABLE_CODE), f"{name}: a long code line is cut off"
        wide = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        assert not wide, f"{name}: the page scrolls sideways"
    assert not tab.errors, tab.errors
    assert not tab.remote, f"requests outside the site: {tab.remote[:5]}"

def test_chapters_have_a_table_of_contents(site, tab):
    tab.open(site, "10_vocab.html")
    toc = tab.hrefs("nav.md-nav--secondary a.md-nav__link")
    assert "#alp-average-log-probability" in toc and "#alp" in toc and len(toc) > 10

def test_search_finds_alp_in_the_vocabulary_chapter(site, tab):
    page = tab.open(site, "index.html")
    box = page.locator("input.md-search__input")
    box.click()
    box.press_sequentially("ALP", delay=20)
    page.wait_for_selector(".md-search-result__item", timeout=30_000)
    hits = tab.hrefs(".md-search-result__item > a")
    assert hits and hits[0].split("?")[0].endswith("10_vocab.html"), hits[:5]
    assert not tab.errors and not tab.remote
    index = (site/"search"/"search_index.json").read_text(encoding="utf-8")
    assert "ALP" in index and "Copied!" not in index and "<math" not in index

DRAW = """async ([family, text]) => {
  const draw = async (font) => {
    const c = document.createElement('canvas');
    c.width = 360; c.height = 50;
    const g = c.getContext('2d');
    g.font = font;
    g.fillText(text, 0, 38);
    return [c.toDataURL(), g.measureText(text).width];
  };
  await document.fonts.load(`32px "${family}"`, text);
  return [await draw(`32px "${family}"`), await draw('32px "no such font family"')];
}"""

def system_cjk_fonts() -> str:
    "Fonts that fontconfig offers for Chinese (none on CI machines)."
    try:
        fc = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True)
        return fc.stdout.strip()
    except OSError:
        return ""

def test_the_book_font_loads_and_draws_chinese(site, tab):
    page = tab.open(site, "10_vocab.html")
    faces = page.evaluate("Array.from(document.fonts).map(f => [f.family.replace(/\"/g, ''), f.status])")
    assert [CJK_FAMILY, "loaded"] in faces, faces          # loaded by the page's own Chinese text
    assert page.evaluate(f"document.fonts.check('16px \"{CJK_FAMILY}\"', '中文')")
    (ours, our_width), (other, other_width) = page.evaluate(DRAW, [CJK_FAMILY, SENTENCE])
    if not system_cjk_fonts():                              # without the face, Chinese is boxes or nothing
        assert ours != other and our_width != other_width
    assert not tab.errors and not tab.remote

CJK_LEAVES = r"""() => Array.from(document.querySelectorAll(['td', 'pre', 'p', 'li', 'code', 'span'].map(t => 'article ' + t)
  .join(', '))).filter(e => !e.children.length && /[\u4e00-\u9fff]/.test(e.textContent) && e.getClientRects().length)
  .map((e, i) => { e.dataset.cjk = i; return i; })"""

def test_chinese_is_drawn_as_laid_out_again(site, tab):
    """Every Chinese text on the evaluation page looks the same before and after its text is set again (which makes the
    browser shape and draw it anew). With the book's face listed after the Latin fonts, Chromium kept some Chinese it
    had laid out while the face was loading as boxes (the page's worked example), though the face had loaded."""
    page = tab.open(site, "60_eval.html")
    stale = []
    for i in page.evaluate(CJK_LEAVES):
        el = page.locator(f'[data-cjk="{i}"]')
        el.scroll_into_view_if_needed()
        box = el.bounding_box()
        if not box or box["width"] < 1 or box["height"] < 1:
            continue
        clip = {k: box[k] for k in ("x", "y", "width", "height")}
        before = page.screenshot(clip=clip)
        el.evaluate("e => { e.textContent = e.textContent; }")
        if page.screenshot(clip=clip) != before:
            stale.append(el.text_content()[:40])
    assert not stale, f"Chinese drawn as it was before the book's font loaded: {stale}"
    assert not tab.errors and not tab.remote


def test_every_chinese_character_on_the_pages_is_in_the_committed_font(site):
    from fontTools.ttLib import TTFont
    served = site/"assets"/"fonts"/cjk_font_path("woff2").name
    cmaps = [TTFont(p).getBestCmap() for p in (served, cjk_font_path("woff2"), cjk_font_path("otf"))]
    assert cmaps[0] == cmaps[1] == cmaps[2]
    files = [*site.rglob("*.html"), site/"search"/"search_index.js"]
    used = cjk_chars(html.unescape("".join(p.read_text(encoding="utf-8") for p in files)))
    assert len(used) > 100 and SENTENCE[0] in used
    missing = "".join(c for c in used if ord(c) not in cmaps[0])
    assert not missing, f"characters missing from the committed font (run `make font`): {missing}"

def test_pages_carry_code_prose_tables_and_figures(site):
    page = (site/"01_assets.html").read_text(encoding="utf-8")
    assert 'class="highlight-ipynb' in page and "<table" in page       # code, and the prose's tables
    assert "load_mixtral_tokenizer" in page                              # show_doc of the exported functions
    assert "#| export" not in page and "#| echo" not in page and "nbdev_export()" not in page
    figures = re.findall(r'<img [^>]*src="(figures/01_assets-[0-9]+\.png)"', page)   # figures as files
    assert figures and all((site/f).stat().st_size > 1000 for f in figures)
    assert "<img" in (site/"index.html").read_text(encoding="utf-8")
    assert (site/"images"/"base_loss.png").exists()
    vocab = (site/"10_vocab.html").read_text(encoding="utf-8")
    assert "<math" in vocab and "$$" not in vocab                       # the ALP formula as MathML
    pretrain = (site/"40_pretrain.html").read_text(encoding="utf-8")
    prose = re.sub(r"<(pre|code|script|style)\b.*?</\1>", "", pretrain, flags=re.S)
    assert 'display="inline"' in pretrain and not re.search(r"\$[A-Za-z\\][^$<]*\$", prose)   # $W$ as MathML

def test_nothing_is_loaded_from_the_network(site):
    remote = re.compile(r'<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)="(?:https?:)?//'
                        r'|url\(["\']?(?:https?:)?//|@import\s+["\']?(?:https?:)?//')
    for p in [*site.glob("*.html"), *site.rglob("*.css")]:
        m = remote.search(p.read_text(encoding="utf-8"))
        assert not m, f"{p.relative_to(site)}: {m.group(0)}"
