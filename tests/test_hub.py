"""The full config's hub sources, offline from a real Hugging Face cache (tests/hub_cache.py): Mixtral's
tokenizer and weights by repo id, dataset files by glob, the data stage's hub source against its path source,
the held-out SkyPile file of configs/mixtral-8x7b.yaml, and downloads from a local HTTP hub."""

import fnmatch, json
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
import pytest
from cmixtral.core import *
from cmixtral.assets import *
from cmixtral.codec import CodecConfig
from cmixtral.data import DataConfig, DataSource, encode_sources
from hub_cache import cache_model_dir, cache_repo, commit_of, repo_dir, run_offline

ROOT = Path(__file__).resolve().parent.parent
MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
MIXTRAL_MD5 = "37974873eb68a7ab30c4912fc36264ae"
SAMPLES = ["Hello world, it's 1998.", "我的名字是小明。", "emoji 🤗 and 龘"]


def last_json(r) -> dict:
    "The JSON object a `run_offline` script printed last, or the failure with its stderr."
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mixtral_cache(tmp_path_factory, tok):
    "An HF_HOME with mistralai/Mixtral-8x7B-v0.1: mistral_common's tokenizer.model and a tiny bf16 Mixtral."
    import torch
    from cmixtral.checkpoint import save_model

    home, folder = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("tiny") / "model"
    spec = BaseModelSpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = build_tiny_mixtral(spec, vocab_size=32000).to(torch.bfloat16)
    save_model(model, folder, tok)
    (folder / "tokenizer.model").write_bytes(
        package_file("mistral_common", "data/tokenizer.model.v1").read_bytes()
    )
    cache_model_dir(home, MIXTRAL, folder)
    return home, model


def test_cache_layout_is_huggingface_hubs(mixtral_cache):
    "Blobs named by sha256, snapshot files as relative symlinks into them, refs/main naming the commit."
    from huggingface_hub import scan_cache_dir

    home, _ = mixtral_cache
    root = repo_dir(home, MIXTRAL)
    snap = root / "snapshots" / commit_of(MIXTRAL)
    assert (root / "refs" / "main").read_text() == commit_of(MIXTRAL)
    link = snap / "tokenizer.model"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve().parent == root / "blobs" and link.resolve().name == file_hash(link, "sha256")
    info = scan_cache_dir(home / "hub")  # huggingface_hub's own reader agrees
    (repo,) = [r for r in info.repos if r.repo_id == MIXTRAL]
    assert repo.repo_type == "model" and {f.file_name for f in next(iter(repo.revisions)).files} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.json",
    }


def test_mixtral_tokenizer_and_weights_load_by_repo_id_offline(mixtral_cache, tok, tmp_path):
    "(a) the tokenizer resolves from the cache as the package's; (b) the tiny Mixtral loads and stays bf16."
    home, model = mixtral_cache
    r = run_offline(
        home,
        f"""
import json, torch
from pathlib import Path
from cmixtral.assets import AssetSpec, BaseModelSpec, prepare_tokenizer, prepare_base_model
from cmixtral.checkpoint import load_mixtral_tokenizer, load_model
from transformers import AutoTokenizer
samples = {SAMPLES!r}
by_id = load_mixtral_tokenizer("{MIXTRAL}")
auto = AutoTokenizer.from_pretrained("{MIXTRAL}")
spec = AssetSpec("hub", "{MIXTRAL}", md5="{MIXTRAL_MD5}")
prepared = prepare_tokenizer(spec, Path("{tmp_path}"), Path("{tmp_path}/tok"))
m = load_model("{MIXTRAL}")
base, log = prepare_base_model(BaseModelSpec(source="hub", path="{MIXTRAL}"), prepared, ".", Path("unused"))
print(json.dumps(dict(
    by_id=[by_id(s)["input_ids"] for s in samples], auto=[auto(s)["input_ids"] for s in samples],
    prepared=[prepared(s)["input_ids"] for s in samples],
    saved=sorted(p.name for p in Path("{tmp_path}/tok").iterdir()),
    dtype=str(m.dtype), base_dtype=str(base.dtype), log=log, vocab=m.config.vocab_size,
    w=m.model.embed_tokens.weight[:3, :4].float().tolist())))
""",
    )
    got = last_json(r)
    want = [tok(s)["input_ids"] for s in SAMPLES]
    assert got["by_id"] == got["auto"] == got["prepared"] == want
    assert "tokenizer.model" in got["saved"] and "tokenizer.json" in got["saved"]
    assert (
        got["dtype"] == got["base_dtype"] == "torch.bfloat16" and got["log"] == [] and got["vocab"] == 32000
    )
    assert got["w"] == model.model.embed_tokens.weight[:3, :4].float().tolist()


def test_an_uncached_model_fails_offline_in_one_line(tmp_path):
    r = run_offline(
        tmp_path,
        """
from cmixtral.core import CmixtralError
from cmixtral.assets import AssetSpec, hub_tokenizer
try:
    hub_tokenizer(AssetSpec("hub", "mistralai/Mixtral-8x7B-v0.1"))
except CmixtralError as e:
    print(e)
""",
    )
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.strip().splitlines()
    assert line.startswith("cannot fetch hub model mistralai/Mixtral-8x7B-v0.1 (HF_HUB_OFFLINE is set")


@pytest.fixture
def web(tmp_path):
    "Two shards of a web corpus, one jsonl with bad lines and one parquet with a null, as local files."
    d = tmp_path / "local" / "data"
    d.mkdir(parents=True)
    rows = [f"第{i}篇文章，北京今天天气很好。" for i in range(30)]
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in rows[:15]] + [
        '{"text": "broken',
        '{"text": ""}',
    ]
    (d / "train-00000-of-00002.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(
        pa.table({"text": rows[15:] + [None]}), d / "train-00001-of-00002.parquet", row_group_size=7
    )
    (d / "other.txt").write_text("not data")
    return tmp_path / "local", rows


def test_hub_files_globs_and_names_an_unmatched_pattern(web, tmp_path):
    "(c) globs as the hub matches them, sorted per pattern; an unmatched pattern is one line naming it."
    root, _ = web
    home = tmp_path / "hf"
    cache_repo(home, "org/web", {f"data/{p.name}": p for p in (root / "data").iterdir()}, "dataset")
    r = run_offline(
        home,
        """
import json
from cmixtral.core import hub_files, hub_url, CmixtralError
rel = lambda ps: [p.relative_to(p.parents[1]).as_posix() for p in ps]
out = dict(train=rel(hub_files("org/web", ["data/train-*"])),
           two=rel(hub_files("org/web", ["data/*.parquet", "data/*"])),
           url=hub_url(hub_files("org/web", "data/other.txt")[0]))
for pats in (["data/train-*", "data/validation-*"], []):
    try:
        hub_files("org/web", pats)
    except CmixtralError as e:
        out.setdefault("errors", []).append(str(e))
print(json.dumps(out))
""",
    )
    got = last_json(r)
    assert got["train"] == ["data/train-00000-of-00002.jsonl", "data/train-00001-of-00002.parquet"]
    assert got["two"] == [
        "data/train-00001-of-00002.parquet",
        "data/other.txt",
        "data/train-00000-of-00002.jsonl",
    ]
    assert got["url"] == f"hf://datasets/org/web@{commit_of('org/web')}/data/other.txt"
    assert got["errors"] == [
        "hub dataset org/web: no file matches 'data/validation-*' in the cache",
        "hub dataset org/web: no file patterns given",
    ]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tok):
    "Mixtral's tokenizer saved as an HF tokenizer folder."
    d = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(d)
    return d


def test_data_stage_reads_a_hub_dataset_as_the_same_local_files(web, tmp_path, tok_dir):
    """(d) source: hub and source: path give the same blocks, counts and skips, read in place; hub files are recorded
    by hf:// address."""
    root, rows = web
    home = tmp_path / "hf"
    cache_repo(home, "org/web", {f"data/{p.name}": p for p in (root / "data").iterdir()}, "dataset")
    kw = dict(block_size=8, num_proc=1, split=[4, 1])
    src = DataSource("web", "path", path=str(root), files=["data/train-*"])
    local = encode_sources([src], tmp_path / "a", tok_dir, DataConfig(datasets=[src], **kw))
    r = run_offline(
        home,
        f"""
import json
from cmixtral.data import DataConfig, DataSource, encode_sources
src = DataSource("web", "hub", path="org/web", files=["data/train-*"])
got = encode_sources([src], "{tmp_path}/b", "{tok_dir}", DataConfig(datasets=[src], **{kw!r}))
print(json.dumps({{k: got[k] for k in ("rows", "skipped", "files", "entries")}}))
""",
    )
    hub = last_json(r)
    assert hub["rows"] == local["rows"] and hub["skipped"] == local["skipped"] == {
        "web": {"malformed json": 1, "empty text": 1, "no text field": 1}
    }
    for split in ("train", "dev"):
        a, b = (tmp_path / x / "data" / "zh" / "web" / f"encoded-web-{split}" for x in "ab")
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert all((a / p.name).read_bytes() == (b / p.name).read_bytes() for p in a.glob("*.arrow"))
    assert sum(r["docs"] for r in hub["rows"]) == len(rows)
    at = f"hf://datasets/org/web@{commit_of('org/web')}/data/"
    assert hub["files"]["web"] == [at + "train-00000-of-00002.jsonl", at + "train-00001-of-00002.parquet"]
    assert hub["entries"]["web"]["read"] == hub["files"]["web"] and local["files"]["web"] == [
        str(p) for p in sorted((root / "data").glob("train-*"))
    ]
    assert (hub["entries"]["web"]["path"], hub["entries"]["web"]["files"]) == ("org/web", ["data/train-*"])


def test_a_missing_hub_shard_is_named(web, tmp_path):
    root, _ = web
    home = tmp_path / "hf"
    cache_repo(
        home,
        "org/web",
        {"data/train-00000-of-00002.jsonl": root / "data" / "train-00000-of-00002.jsonl"},
        "dataset",
    )
    r = run_offline(
        home,
        """
from cmixtral.core import CmixtralError
from cmixtral.data import DataSource, source_files
try:
    source_files(DataSource("web", "hub", path="org/web", files=["data/train-*"]), ".")
except CmixtralError as e:
    print(e)
""",
    )
    assert "missing shard(s) 1 of 2" in r.stdout, r.stderr


def test_hub_corpora_split_train_heldout_both(tmp_path):
    "Hub corpus files fetched offline; split train trains on all, heldout holds all out, both every 20th."
    home = tmp_path / "hf"
    docs = [f"文档{i}。" for i in range(60)]
    body = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs).encode()
    cache_repo(
        home,
        "Skywork/SkyPile-150B",
        {f"data/{n}_zh_head_0000.jsonl": body for n in ("a", "b", "c")},
        "dataset",
    )
    pq_file = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": docs}), pq_file)
    cache_repo(
        home,
        "DKYoon/SlimPajama-6B",
        {"data/test-00000-of-00001-9f769cf7ce219017.parquet": pq_file},
        "dataset",
    )
    r = run_offline(
        home,
        f"""
import json
from pathlib import Path
from cmixtral.core import write_json
from cmixtral.assets import CorpusSpec, prepare_corpus, corpus_paths
run = Path("{tmp_path}/run")
sky = "Skywork/SkyPile-150B"
specs = [CorpusSpec("hub", sky, "data/a_zh_head_0000.jsonl", name="zh-a", format="jsonl", split="train"),
         CorpusSpec("hub", sky, "data/c_zh_head_0000.jsonl", name="zh-c", format="jsonl", split="heldout"),
         CorpusSpec("hub", "Skywork/SkyPile-150B", "data/b_*.jsonl", name="zh-b", format="jsonl"),
         CorpusSpec("hub", "DKYoon/SlimPajama-6B", "data/test-*.parquet", name="en", lang="en",
                    format="parquet")]
rows = [prepare_corpus(s, run, run / "assets" / "corpora" / s.name, 20) for s in specs]
write_json(run / "assets" / "corpora" / "index.json", rows)
print(json.dumps(dict(rows=rows, train=[p.parent.name for p in corpus_paths(run, "zh", "train")],
                      heldout=[p.parent.name for p in corpus_paths(run, None, "heldout")])))
""",
    )
    got = last_json(r)
    counts = {row["name"]: (row["split"], row["train_docs"], row["heldout_docs"]) for row in got["rows"]}
    assert counts == {
        "zh-a": ("train", 60, 0),
        "zh-c": ("heldout", 0, 60),
        "zh-b": ("both", 57, 3),
        "en": ("both", 57, 3),
    }
    assert got["train"] == ["zh-a", "zh-b"] and got["heldout"] == ["zh-c", "zh-b", "en"]
    assert got["rows"][1]["file"].startswith("hf://datasets/Skywork/SkyPile-150B@") and got["rows"][1][
        "file"
    ].endswith("/data/c_zh_head_0000.jsonl")
    held = tmp_path / "run" / "assets" / "corpora" / "zh-c" / "heldout.jsonl"
    assert read_jsonl(held) == docs  # the whole file, in order


def corpus_files(c: CorpusSpec) -> str:
    "Where a corpus of a config comes from: 'hub repo/pattern' or a local path."
    return f"{c.package}/{c.file}" if c.source == "hub" else str(Path(c.file).expanduser())


def test_full_config_holds_the_codec_text_out_of_the_vocabulary():
    "No codec text of configs/mixtral-8x7b.yaml is a file of a corpus that trains (split train or both)."
    cfg = load_config(ROOT / "configs" / "mixtral-8x7b.yaml")
    A, S = section(cfg, "assets", AssetsConfig), section(cfg, "codec", CodecConfig)
    texts = [f"{t.repo}/{t.path}" if t.repo else str(Path(t.path).expanduser()) for t in S.texts]
    assert texts == ["Skywork/SkyPile-150B/data/2023-06_zh_head_0000.jsonl"]
    learnt = [corpus_files(c) for c in A.corpora if c.split in ("train", "both")]
    assert not [(t, c) for t in texts for c in learnt if fnmatch.fnmatch(t, c) or t == c]
    held = {c.name: corpus_files(c) for c in A.corpora if c.split == "heldout"}
    assert held == {"zh-skypile-2023-06": texts[0]} and {t.name for t in S.texts} == set(held)
    zh_train = [c for c in A.corpora if c.lang == "zh" and c.split == "train"]
    assert len(zh_train) >= 2 and all(
        c.source == "hub" and c.package == "Skywork/SkyPile-150B" for c in zh_train
    )
    assert {c.split for c in A.corpora} <= set(CORPUS_SPLITS)


def test_hub_files_downloads_file_by_file_online_then_serves_offline(web, tmp_path):
    "Online (a local HTTP hub as HF_ENDPOINT): only matching files download; offline they are then cached."
    from hub_cache import LocalHub

    root, _ = web
    home = tmp_path / "hf"
    files = {f"data/{p.name}": p for p in (root / "data").iterdir()}
    script = """
import json
from cmixtral.core import hub_files
print(json.dumps([p.relative_to(p.parents[1]).as_posix() for p in hub_files("org/web", ["data/train-*"])]))
"""
    with LocalHub().add("org/web", files) as hub:
        r = run_offline(home, script, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint)
        online = last_json(r)
        gets = sorted(p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p)
    assert online == ["data/train-00000-of-00002.jsonl", "data/train-00001-of-00002.parquet"]
    assert [g.rsplit("/", 1)[1] for g in gets] == [
        "train-00000-of-00002.jsonl",
        "train-00001-of-00002.parquet",
    ]
    snap = repo_dir(home, "org/web", "dataset") / "snapshots" / commit_of("org/web")
    for rel in online:
        assert (snap / rel).read_bytes() == Path(files[rel]).read_bytes() and (snap / rel).is_symlink()
    assert not (snap / "data" / "other.txt").exists()
    assert last_json(run_offline(home, script)) == online  # the server is gone: the cache answers


def test_an_interrupted_download_resumes(web, tmp_path):
    "A partial download in the cache (blobs/<etag>.incomplete) continues by a Range request, not anew."
    import hashlib
    from hub_cache import LocalHub

    root, _ = web
    home = tmp_path / "hf"
    data = (root / "data" / "train-00001-of-00002.parquet").read_bytes()
    blobs = repo_dir(home, "org/web", "dataset") / "blobs"
    blobs.mkdir(parents=True)
    (blobs / (hashlib.sha256(data).hexdigest() + ".incomplete")).write_bytes(data[:100])
    with LocalHub().add("org/web", {"data/train-00001-of-00002.parquet": data}) as hub:
        r = run_offline(
            home,
            """
from cmixtral.core import hub_files
print(hub_files("org/web", ["data/*.parquet"])[0].read_bytes().hex())
""",
            HF_HUB_OFFLINE="0",
            HF_ENDPOINT=hub.endpoint,
        )
        ranges = [rng for m, p, rng in hub.requests if m == "GET" and "/resolve/" in p]
    assert r.returncode == 0, r.stderr[-2000:]
    assert bytes.fromhex(r.stdout.strip()) == data and ranges == ["bytes=100-"]


def test_the_codec_time_plan_counts_a_cached_hub_text_at_its_own_size(tmp_path):
    "A hub text in the cache counts at its size; one not cached yet at the stated size of the seed's SkyPile file."
    home = tmp_path / "hf"
    cache_repo(home, "Skywork/SkyPile-150B", {"data/a_zh_head_0000.jsonl": '{"text": "中"}\n'.encode() * 1000},
               "dataset")
    r = run_offline(
        home,
        """
import json
from cmixtral.core import Config
from cmixtral.codec import codec_time_plan
texts = [dict(name=n, lang="zh", repo="Skywork/SkyPile-150B", path=f"data/{n}_zh_head_0000.jsonl") for n in "ab"]
plans = [codec_time_plan(Config({"vocab": {"char_levels": [1], "zh_vocab_sizes": [5]},
                                 "codec": {"tokenizers": [{"name": "m", "source": "base"}], "texts": t}}))
         for t in (texts[:1], texts)]
print(json.dumps([p[0]["assumption"] for p in plans]))
""",
    )
    cached, both = last_json(r)
    assert "0.02 MB of text (hub texts in the Hugging Face cache)" in cached, cached        # 16,000 bytes
    assert "1,400.02 MB of text" in both and "GB assumed per hub text" in both, both       # b is not cached


def test_hub_cached_reads_the_cache_the_environment_names_now(tmp_path, monkeypatch):
    "huggingface_hub fixes its cache path when first imported; `hub_cached` follows HF_HOME as it is at the call."
    import huggingface_hub  # noqa: F401  (imported before HF_HOME changes, as in a notebook or a preflight)

    home = tmp_path / "hf"
    cache_repo(home, "Skywork/SkyPile-150B", {"data/x.jsonl": b"{}\n"}, "dataset")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    assert hub_cached("Skywork/SkyPile-150B") == {"data/x.jsonl": 3}
