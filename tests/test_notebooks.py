"Every notebook's fast cells, as nbdev_test runs them (cells flagged with tst_flags are skipped)."
import pytest
from pathlib import Path
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook_tests

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT/"nbs").glob("*.ipynb"))

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, cache, monkeypatch):
    monkeypatch.chdir(ROOT)
    flags = get_config().tst_flags.split()
    ok, secs = run_notebook_tests(nb, skip_flags=flags)
    assert ok, f"{nb.name} failed (traceback above)"
