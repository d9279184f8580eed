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

@pytest.fixture(scope="session")
def tok():
    "Mixtral-8x7B's own tokenizer, from the mistral-common package."
    from cmixtral.assets import package_file
    from cmixtral.checkpoint import load_mixtral_tokenizer
    return load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
