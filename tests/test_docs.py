"The offline docs site, opened in a real browser (Debian's chromium, driven by Playwright), and the README."
import shutil
from pathlib import Path
import pytest
from cmixtral.docs import build_site, readme_text

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

def test_readme_is_generated_from_index_notebook():
    assert (ROOT/"README.md").read_text(encoding="utf-8") == readme_text(ROOT/"nbs"/"index.ipynb"), \
        "README.md is stale: run `cmixtral readme` after editing nbs/index.ipynb"

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_site(tmp_path_factory.mktemp("site")/"_site", ROOT)

def test_every_page_loads_with_its_images_in_chromium(site):
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed for this test (make deps installs it)"
    pages = sorted(site.glob("*.html"))
    notebooks = sorted((ROOT/"nbs").glob("*.ipynb"))
    assert len(pages) == len(notebooks)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page, errors = browser.new_page(), []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for p in pages:
            resp = page.goto(p.as_uri())
            assert resp is None or resp.ok, p.name
            assert page.locator("nav a").count() == len(pages), f"{p.name}: sidebar incomplete"
            assert page.locator("main h1").count() == 1 and page.locator("main h1").inner_text().strip(), f"{p.name}: no title"
            bad = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")
            assert not bad, f"{p.name}: images failed to load: {bad}"
        # the sidebar is in notebook order, index first
        order = page.locator("nav a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
        assert order[0] == "index.html" and order[1:] == sorted(order[1:])
        browser.close()
    assert not errors

def test_pages_carry_code_prose_tables_and_figures(site):
    html = (site/"01_assets.html").read_text()
    assert 'class="code"' in html and "<table>" in html            # code and the prose's tables
    assert "load_mixtral_tokenizer" in html                         # show_doc / code of the exported functions
    assert "#| export" not in html and "nbdev_export()" not in html  # directives and hidden cells are gone
    assert '<img class="fig"' in html                              # the run's figures (committed outputs)
    assert '<img' in (site/"index.html").read_text() and (site/"images"/"base_loss.png").exists()
