"""A real Hugging Face cache, written offline: what `snapshot_download`/`hf_hub_download` leave under `HF_HOME`.

Layout (huggingface_hub's file_download.py and _snapshot_download.py):

    {HF_HOME}/hub/{models|datasets}--{org}--{name}/
        blobs/{etag}                     the bytes; an LFS file's etag is its sha256
        snapshots/{commit}/{path}        relative symlink to ../../blobs/{etag} (a copy where symlinks fail)
        refs/main                        the commit the branch points at (no newline)

With `HF_HOME` pointing here and `HF_HUB_OFFLINE=1`, huggingface_hub, transformers and cmixtral resolve repo ids
from this folder. huggingface_hub reads both variables when it is imported, so code under them runs in a fresh
process (`run_offline`).
"""
import hashlib, os, subprocess, sys
from pathlib import Path
from huggingface_hub.file_download import repo_folder_name

ROOT = Path(__file__).resolve().parent.parent


def commit_of(repo_id: str) -> str:
    "A fixed 40-hex commit for `repo_id` (what the hub would call its main revision)."
    return hashlib.sha1(repo_id.encode()).hexdigest()


def repo_dir(hf_home, repo_id: str, repo_type: str = "model") -> Path:
    "The cache folder of one repo: {HF_HOME}/hub/{repo_type}s--org--name."
    return Path(hf_home) / "hub" / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def cache_repo(hf_home, repo_id: str, files: dict, repo_type: str = "model", commit: str | None = None,
               symlinks: bool = True) -> Path:
    "Write `files` ({path in repo: bytes or a local Path}) as repo `repo_id`'s cached snapshot; return the snapshot."
    assert repo_type in ("model", "dataset"), repo_type
    commit = commit or commit_of(repo_id)
    assert len(commit) == 40 and int(commit, 16) >= 0, commit
    root = repo_dir(hf_home, repo_id, repo_type)
    snap = root / "snapshots" / commit
    for rel, data in files.items():
        data = Path(data).read_bytes() if isinstance(data, Path) else data
        etag = hashlib.sha256(data).hexdigest()
        blob = root / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        if symlinks:
            dst.symlink_to(os.path.relpath(blob, dst.parent))
        else:
            dst.write_bytes(data)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


def cache_model_dir(hf_home, repo_id: str, folder, commit: str | None = None) -> Path:
    "Cache every file of a saved model folder (config, safetensors, tokenizer) as model repo `repo_id`."
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return cache_repo(hf_home, repo_id, files, "model", commit)


def offline_env(hf_home, **extra) -> dict:
    "The environment of a process that must find everything in `hf_home`'s cache and nothing on the network."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", CMIXTRAL_QUIET="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def run_offline(hf_home, code: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    "Run Python `code` in a fresh process under `offline_env(hf_home)`; its stdout and stderr are captured."
    return subprocess.run([sys.executable, "-c", code], env=offline_env(hf_home, **env), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
