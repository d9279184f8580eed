"""No committed output shows a path of the machine that produced it.

A reader sees the notebooks' outputs (and README.md) as they were executed on one machine; a path of that machine in
them (the checkout, a git worktree, the Python installation, a home directory, a temporary folder) is noise to the
reader and changes with every machine that re-executes the book. The rule, per output text (stream, error traceback,
text/plain, text/markdown, text/html) of every `nbs/*.ipynb`, and README.md as a whole:

- an *absolute path* (a `/` at the start of a token, not inside a URL) is a machine path when it starts with a
  directory of this machine (the checkout and every worktree of its repository, `sys.prefix` and the base prefix, the
  site-packages directories, the home directory, the temporary directory) or with a folder that only ever holds
  machine-specific files (`/root`, `/home`, `/Users`, `/tmp`, `/var/tmp`, `/var/folders`, `/usr/lib/python…`,
  `/usr/local/lib/python…`, `/opt/conda`, or a `.pyenv`, `.venv`, `site-packages` or `dist-packages` folder anywhere),
  or that leads into a checkout of this repository anywhere (two folders or more, then `runs/`, `nbs/`, `configs/`, `cmixtral/`,
  `bench/` or `tests/`: another clone or a removed worktree);
- a path inside an installation (`site-packages/…`, `dist-packages/…`) is a machine path even behind a placeholder
  such as `$PREFIX`, since its layout is the installation's.

Not machine paths: URLs, hub ids (`mistralai/Mixtral-8x7B-v0.1`), relative paths (`runs/tiny/…`), placeholders
(`$PREFIX/bin/python`, `$STORAGE/…`), example paths that name no folder of a machine (`/r/tiny`, `/data/hf`,
`/dev/null`, `/bin/bash`), and anything in a code cell's source (code, not output).

`nbs/figures.json`, the run's numbers that the book's number test reads, is an output too: its keys name a table's
rows, and a row named by a file's place (`…:en-brown//root/.cache/…:train_docs`) names the machine that ran it.
"""
import json, re, site, subprocess, sys, tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/"nbs"

# folders that hold only one machine's files, whatever machine it is
MACHINE_DIRS = ("/root", "/home", "/Users", "/tmp", "/var/tmp", "/var/folders", "/private/var", "/opt/conda",
                "/usr/lib/python", "/usr/local/lib/python")
# a folder of an installation, wherever it lies
INSTALL_PARTS = re.compile(r"(?:^|/)(?:\.pyenv|\.venv|venv/lib|site-packages|dist-packages)(?:/|$)")
# a checkout of this repository elsewhere (another clone, a removed worktree): two or more folders, then one of the
# repository's (`/data/runs/…`, a run directory a cluster user names, is not a checkout)
CHECKOUT_PARTS = re.compile(r"^/[^/]+/[^/]+(?:/[^/]+)*/(?:runs|nbs|configs|cmixtral|bench|tests)/")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I)
# an absolute path: a `/` at the start of a token (not after a word, a dot, `~`, `$` or another `/`)
ABS_PATH = re.compile(r"(?<![\w.~$/\\-])/[^\s'\"`<>()\[\]{},;|]+")
INSTALLED = re.compile(r"[^\s'\"`<>()]*(?:site-packages|dist-packages)/[^\s'\"`<>()]*")


def _worktrees() -> list[str]:
    "The checkout and every worktree of its repository (git's list; the checkout alone without git)."
    try:
        r = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        trees = [l.split(" ", 1)[1] for l in r.stdout.splitlines() if l.startswith("worktree ")]
    except OSError:
        trees = []
    return trees + [str(ROOT)]


def machine_dirs() -> list[str]:
    "Folders of this machine and folders that are machine-specific anywhere, longest first."
    here = [*_worktrees(), sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path.home()), tempfile.gettempdir(),
            *site.getsitepackages(), site.getusersitepackages()]
    real = [str(Path(d).resolve()) for d in here if d]
    dirs = {d.rstrip("/") for d in [*here, *real, *MACHINE_DIRS] if d and d.rstrip("/")}
    return sorted(dirs, key=len, reverse=True)


def machine_paths(text: str, dirs=None) -> list[str]:
    "The machine paths in `text` (see the module's rule), in order of appearance."
    dirs = machine_dirs() if dirs is None else dirs
    text = URL.sub(" ", text)
    found = []
    for m in ABS_PATH.finditer(text):
        p = m.group().rstrip(".:")
        if INSTALL_PARTS.search(p) or CHECKOUT_PARTS.match(p) or any(p == d or p.startswith(d if d.endswith("/python") else d + "/")
                                          or (d.endswith("/python") and p.startswith(d)) for d in dirs):
            found.append(p)
    found += [m.group() for m in INSTALLED.finditer(text) if not m.group().startswith("/")]
    return found


def output_texts(cell: dict):
    "(kind, text) of each output of a notebook cell a reader sees."
    for o in cell.get("outputs") or []:
        if o.get("output_type") == "stream":
            yield o.get("name", "stream"), "".join(o.get("text") or "")
        elif o.get("output_type") == "error":
            yield "error", "\n".join([o.get("evalue", ""), *(o.get("traceback") or [])])
        for kind in ("text/plain", "text/markdown", "text/html"):
            if kind in (o.get("data") or {}):
                v = o["data"][kind]
                yield kind, v if isinstance(v, str) else "".join(v)


def notebook_findings(path, dirs=None) -> list[str]:
    "One line per machine path in the outputs of notebook `path`: notebook, cell (index and id), output kind, path."
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for i, c in enumerate(nb.get("cells") or []):
        for kind, text in output_texts(c):
            out += [f"{Path(path).name} cell {i} (id {c.get('id')}) {kind}: {p}" for p in machine_paths(text, dirs)]
    return out


def test_rule_finds_machine_paths_and_nothing_else():
    dirs = machine_dirs()
    planted = [f"{ROOT}/runs/tiny/sft/loss.png", f"{sys.prefix}/lib/python3.11/site-packages/torch",
               "/root/.pyenv/versions/3.11.7/bin/python3", "/tmp/tmpx75bmu3r/down", "/home/ann/cmixtral/nbs",
               "/work/wt/train/runs/rehearsal/slurm", "$PREFIX/lib/python3.11/site-packages/peft",
               "/usr/lib/python3/dist-packages/yaml"]
    for p in planted:
        assert machine_paths(f"saved to {p}.", dirs), p
        assert machine_paths(f"'{p}'", dirs) and machine_paths(f"<td>{p}</td>", dirs), p
    fine = ("https://huggingface.co/HIT-SCIR/Chinese-Mixtral-8x7B/tree/main/home/tmp.json and hf://datasets/x/tmp/y "
            "mistralai/Mixtral-8x7B-v0.1 runs/tiny/pretrain/loss.png ./runs/rehearsal/slurm/%x-%j.out "
            "$PREFIX/bin/python -m cmixtral.cli $STORAGE/data/sft $TMPDIR ~/venv/bin/activate /r/tiny/slurm "
            "/c/x.yaml /data/hf /data/runs/cmixtral-8x7b/slurm/pretrain.sbatch /dev/null #!/bin/bash 2>/dev/null runs/tiny/tmp/x 1/8 a/b 0.5/0.8/1.0")
    assert machine_paths(fine, dirs) == [], machine_paths(fine, dirs)


def test_planted_path_in_a_notebook_copy_fails(tmp_path):
    "The scan reads outputs, not sources: a path planted in an output is found (named by cell), one in code is not."
    nb = {"cells": [{"cell_type": "code", "id": "c0", "source": ["open('/tmp/x.csv')\n"], "outputs": []},
                    {"cell_type": "code", "id": "c1", "source": ["print(p)"],
                     "outputs": [{"output_type": "stream", "name": "stdout",
                                  "text": [f"wrote {ROOT}/runs/tiny/eval/bpc.png\n"]}]}]}
    p = tmp_path/"99_x.ipynb"
    p.write_text(json.dumps(nb))
    assert notebook_findings(p) == [f"99_x.ipynb cell 1 (id c1) stdout: {ROOT}/runs/tiny/eval/bpc.png"]


@pytest.mark.parametrize("path", sorted(NBS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_outputs_show_no_machine_path(path):
    found = notebook_findings(path)
    assert not found, "machine paths in committed outputs:\n" + "\n".join(found)


def test_readme_shows_no_machine_path():
    found = machine_paths((ROOT/"README.md").read_text(encoding="utf-8"))
    assert not found, f"README.md shows machine paths: {found}"


def figure_key_findings(keys, dirs=None) -> list[str]:
    "The keys of `nbs/figures.json` that hold a machine folder anywhere (a row label may join cells with `/`)."
    dirs = machine_dirs() if dirs is None else dirs
    return [k for k in keys if any(d + "/" in k for d in dirs)]


def test_figure_keys_show_no_machine_path():
    assert figure_key_findings(["assets/corpora.csv:en-brown/en/both//root/.cache/cmixtral/npm/x:train_docs",
                                f"x.csv:{ROOT}/runs/tiny/a.txt:n"])
    assert figure_key_findings(["assets/corpora.csv:en-brown/en/both:train_docs", "fresh.csv:pipeline:total:seconds",
                                "pretrain/arms.csv:base-vocab:zh"]) == []
    found = figure_key_findings(json.loads((NBS/"figures.json").read_text(encoding="utf-8")))
    assert not found, f"nbs/figures.json has keys with machine paths: {found[:5]}"
