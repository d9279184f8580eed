import os, sys
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
