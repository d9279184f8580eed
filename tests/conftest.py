import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("CMIXTRAL_QUIET", "1")

@pytest.fixture(scope="session")
def root() -> Path: return ROOT

@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    "One cache for the whole session (as a user's machine would have), unless CMIXTRAL_CACHE is set."
    p = Path(os.environ.get("CMIXTRAL_CACHE") or tmp_path_factory.mktemp("cache"))
    p.mkdir(parents=True, exist_ok=True)
    os.environ["CMIXTRAL_CACHE"] = str(p)
    return p

@pytest.fixture(scope="session")
def slurm():
    "A one-node SLURM of this session's own (tests/slurm_cluster.py), started when a test first asks."
    from slurm_cluster import SlurmCluster
    with SlurmCluster() as cluster:
        yield cluster

@pytest.fixture
def slurm_login(slurm, monkeypatch):
    "This process as a login node of the session's SLURM: its commands and config, no variables of an enclosing job."
    for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    return slurm

@pytest.fixture(scope="session")
def tok():
    "Mixtral-8x7B's own tokenizer, from the mistral-common package."
    from cmixtral.assets import package_file
    from cmixtral.checkpoint import load_mixtral_tokenizer
    return load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))

@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, cache):
    "The micro config's whole pipeline, run once by the `cmixtral` console script: (run directory, the process)."
    out = tmp_path_factory.mktemp("runs")/"micro"
    r = subprocess.run(["cmixtral", "pipeline", "--config", str(ROOT/"configs"/"micro.yaml"), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r
