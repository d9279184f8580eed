"""A real Hugging Face cache, written offline: what `snapshot_download`/`hf_hub_download` leave in `HF_HOME`.

Layout (huggingface_hub's file_download.py and _snapshot_download.py):

    {HF_HOME}/hub/{models|datasets}--{org}--{name}/
        blobs/{etag}                     the bytes; an LFS file's etag is its sha256
        snapshots/{commit}/{path}        symlink to ../../blobs/{etag} (`symlinks=False`: a copy)
        refs/main                        the commit the branch points at (no newline)

With `HF_HOME` pointing here and `HF_HUB_OFFLINE=1`, huggingface_hub, transformers and cmixtral resolve repo
ids from this folder. huggingface_hub reads both variables when it is imported, so code under them runs in a
fresh process (`run_offline`).
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


def cache_repo(
    hf_home,
    repo_id: str,
    files: dict,
    repo_type: str = "model",
    commit: str | None = None,
    symlinks: bool = True,
) -> Path:
    "Write `files` ({path in repo: bytes or a local Path}) as `repo_id`'s cached snapshot; return it."
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
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        CMIXTRAL_QUIET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def run_offline(hf_home, code: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    "Run Python `code` in a fresh process under `offline_env(hf_home)`; its stdout and stderr are captured."
    return subprocess.run(
        [sys.executable, "-c", code],
        env=offline_env(hf_home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


class LocalHub:
    """A few routes of the hub over HTTP on 127.0.0.1, enough for `snapshot_download` (so `hub_files`) online:
    `GET /api/{models|datasets}/{repo}/revision/{rev}` (the repo's sha and siblings) and `HEAD`/`GET`
    (`Range`) of `/{datasets/}{repo}/resolve/{rev}/{path}` with the headers huggingface_hub checks
    (X-Repo-Commit, ETag, Content-Length). `requests` lists (method, path, Range) of every request. Use as a
    context manager; `endpoint` is for HF_ENDPOINT."""

    def __init__(self):
        self.repos, self.requests = {}, []

    def add(self, repo_id: str, files: dict, repo_type: str = "dataset", commit: str | None = None):
        "Serve `files` ({path: bytes or Path}) as repo `repo_id` at `commit`."
        data = {k: Path(v).read_bytes() if isinstance(v, Path) else v for k, v in files.items()}
        self.repos[(repo_type, repo_id)] = (commit or commit_of(repo_id), data)
        return self

    def _route(self, path: str):
        "(kind, repo key, file path) of a request path, or None."
        from urllib.parse import unquote

        path = unquote(path.split("?")[0])
        for (rtype, rid), (commit, data) in self.repos.items():
            api = f"/api/{rtype}s/{rid}/revision/"
            if path.startswith(api) and path[len(api) :] in ("main", commit):
                return "info", (rtype, rid), None
            res = f"/{'' if rtype == 'model' else rtype + 's/'}{rid}/resolve/"
            if path.startswith(res):
                rev, _, rel = path[len(res) :].partition("/")
                if rev in ("main", commit) and rel in data:
                    return "file", (rtype, rid), rel
        return None

    def __enter__(self):
        import json, threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, body: bool):
                hub.requests.append((self.command, self.path, self.headers.get("Range", "")))
                r = hub._route(self.path)
                if r is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                kind, key, rel = r
                commit, data = hub.repos[key]
                if kind == "info":
                    out = json.dumps(
                        {
                            "id": key[1],
                            "sha": commit,
                            "private": False,
                            "siblings": [{"rfilename": f} for f in sorted(data)],
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    out, start = data[rel], 0
                    rng = self.headers.get("Range", "")
                    if rng.startswith("bytes=") and body:
                        start = int(rng[6:].split("-")[0] or 0)
                    self.send_response(206 if start else 200)
                    self.send_header("X-Repo-Commit", commit)
                    self.send_header("ETag", f'"{hashlib.sha256(out).hexdigest()}"')
                    if start:
                        self.send_header("Content-Range", f"bytes {start}-{len(out) - 1}/{len(out)}")
                    out = out[start:]
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if body:
                    self.wfile.write(out)

            def do_GET(self):
                self._reply(True)

            def do_HEAD(self):
                self._reply(False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
