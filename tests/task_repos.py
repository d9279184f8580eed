"""The four benchmarks' hub dataset repos, written offline into a Hugging Face cache from a task directory.

`cache_task_repos` turns task files in the local layout (`generate_task_data`'s output: ceval/, cmmlu/, mmlu/,
hellaswag/) into the repos as the eval stage assumes the hub holds them (nbs/60_eval, "The real files, fetched from
the hub"; the layouts are assumed, not copied from the hub):

    ceval/ceval-exam   ceval-exam.zip with {dev,val,test}/<subject>_{split}.csv, beside ceval-exam.py and README.md
    haonan-li/cmmlu    cmmlu_v1_0_1.zip with {dev,test}/<subject>.csv, beside cmmlu.py and README.md
    cais/mmlu          <subject>/{dev,validation,test}-00000-of-00001.parquet, all/ (every subject again),
                       auxiliary_train/train-00000-of-00001.parquet
    Rowan/hellaswag    default/{train,validation,test}/0000.parquet (the hub's parquet conversion)

Each repo is cached at the revision its config entry names: a commit hash is the snapshot's commit; a branch name
gets a ref of its own (refs/<branch>) beside refs/main.
"""
import io, json, re, zipfile
from pathlib import Path
from hub_cache import cache_repo, commit_of, repo_dir

SCRIPT = b"# a datasets loading script (not run: the eval stage reads the files)\n"


def _zip(folder: Path) -> bytes:
    "A zip of every file under `folder`, named by its path below it (dev/law_dev.csv)."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in Path(path).read_text(encoding="utf-8").splitlines() if l.strip()]


def _parquet(rows: list[dict]) -> bytes:
    import pandas as pd
    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    return buf.getvalue()


def task_repo_files(task: str, task_dir) -> dict[str, bytes]:
    "{path in the repo: bytes} of `task`'s hub repo, in the assumed layout, from the task directory `task_dir`."
    d = Path(task_dir)
    if task == "ceval-valid":
        return {"ceval-exam.zip": _zip(d/"ceval"), "ceval-exam.py": SCRIPT, "README.md": b"# C-Eval\n"}
    if task == "cmmlu":
        return {"cmmlu_v1_0_1.zip": _zip(d/"cmmlu"), "cmmlu.py": SCRIPT, "README.md": b"# CMMLU\n"}
    if task == "mmlu":
        out, every = {}, {"dev": [], "test": []}
        for sd in sorted(x for x in (d/"mmlu").iterdir() if x.is_dir()):
            for split in ("dev", "test"):
                rows = _jsonl(sd/f"{split}.jsonl")
                every[split] += rows
                out[f"{sd.name}/{split}-00000-of-00001.parquet"] = _parquet(rows)
            out[f"{sd.name}/validation-00000-of-00001.parquet"] = out[f"{sd.name}/dev-00000-of-00001.parquet"]
        for split, rows in every.items():
            out[f"all/{split}-00000-of-00001.parquet"] = _parquet(rows)
        out["auxiliary_train/train-00000-of-00001.parquet"] = _parquet(every["dev"])
        return out
    if task == "hellaswag":
        train, val = (_jsonl(d/"hellaswag"/f"hellaswag_{s}.jsonl") for s in ("train", "val"))
        test = [{**r, "label": ""} for r in val]        # released without labels
        return {f"default/{s}/0000.parquet": _parquet(rows)
                for s, rows in (("train", train), ("validation", val), ("test", test))}
    raise ValueError(f"no hub layout for task {task}")


def cache_task_repos(hf_home, task_dir, hub_tasks) -> dict[str, Path]:
    """Cache the hub repo of every entry of `hub_tasks` (HubTask or its config mapping) in `hf_home`, built from the
    task directory `task_dir`, at the entry's revision; {task: snapshot folder}."""
    out = {}
    for spec in hub_tasks:
        spec = spec if isinstance(spec, dict) else vars(spec)
        repo, rev = spec["repo"], spec.get("revision", "main")
        is_commit = bool(re.fullmatch(r"[0-9a-f]{40}", rev))
        snap = cache_repo(hf_home, repo, task_repo_files(spec["task"], task_dir), "dataset",
                          commit=rev if is_commit else commit_of(f"{repo}@{rev}"))
        if not is_commit and rev != "main":                 # a branch: refs/<branch>, as snapshot_download writes it
            ref = repo_dir(hf_home, repo, "dataset")/"refs"/rev
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(snap.name)
        out[spec["task"]] = snap
    return out
