"The data stage on real files: conversion, bad input, the split, parallel tokenisation with the real Mixtral tokenizer, mixtures."
import json, os
from pathlib import Path
import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
import pytest
from datasets import load_from_disk
from cmixtral.core import *
from cmixtral.assets import package_file
from cmixtral.checkpoint import load_mixtral_tokenizer
from cmixtral.data import *

ZH = ["北京是中国的首都。", "今天天气很好，我们去公园散步。", "人民日报报道了新年的消息。"]
EN = ["The jury said it did not find evidence.", "A second document, in English."]

@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
    tok.save_pretrained(d)
    return d

def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path

@pytest.fixture
def shards(tmp_path):
    "A dataset folder laid out like a hub dataset: one jsonl shard with bad lines, one parquet shard in two row groups."
    d = tmp_path/"hubdir"/"data"; d.mkdir(parents=True)
    rows = [{"text": f"{ZH[i % 3]} 第{i}篇。"} for i in range(30)]
    p0 = jsonl(d/"train-00000-of-00002.jsonl", rows[:15])
    with open(p0, "ab") as f:
        f.write(b'{"text": "broken\n{"text": "bad \xff\xfe"}\n{"meta": 1}\n{"text": ""}\n[]\n')
    pq.write_table(pa.table({"text": [r["text"] for r in rows[15:]] + [None], "meta": list(range(16))}),
                   d/"train-00001-of-00002.parquet", row_group_size=8)
    return tmp_path/"hubdir", [r["text"] for r in rows]

def test_local_shards_convert_split_and_count_skips(shards, tmp_path):
    root, texts = shards
    src = DataSource("web-zh", "path", path=str(root), files=["data/train-*"])
    r1 = prepare_text(src, tmp_path/"run", (4, 1))
    assert r1["skipped"] == {"malformed json": 1, "invalid utf-8": 1, "no text field": 2, "empty text": 1, "not a json object": 1}
    train, dev = (tmp_path/"run"/"data"/"zh"/"web-zh"/f"web-zh-{s}.jsonl" for s in ("train", "dev"))
    got_train = [json.loads(l)["text"] for l in train.read_text().splitlines()]
    got_dev = [json.loads(l)["text"] for l in dev.read_text().splitlines()]
    assert got_dev == [texts[i] for i in range(30) if i % 5 == 4] and len(got_train) == 24
    assert sorted(got_train + got_dev) == sorted(texts)                       # every document once, none in both
    before = train.read_bytes(), dev.read_bytes()
    prepare_text(src, tmp_path/"run", (4, 1))
    assert (train.read_bytes(), dev.read_bytes()) == before                   # deterministic

def test_missing_shard_and_truncated_parquet_are_clear_errors(shards, tmp_path):
    root, _ = shards
    pq_file = root/"data"/"train-00001-of-00002.parquet"
    pq_file.write_bytes(pq_file.read_bytes()[:200])
    src = DataSource("web-zh", "path", path=str(root), files=["data/train-*"])
    with pytest.raises(CmixtralError, match="train-00001-of-00002.parquet: cannot read parquet file"):
        prepare_text(src, tmp_path/"run")
    folder = tmp_path/"run"/"data"/"zh"/"web-zh"
    assert not any(p.suffix == ".jsonl" for p in folder.iterdir())          # nothing half-written left looking complete
    pq_file.unlink()
    with pytest.raises(CmixtralError, match="missing shard"):
        prepare_text(src, tmp_path/"run")
    with pytest.raises(CmixtralError, match="no files match"):
        prepare_text(DataSource("x", "path", path=str(root), files=["nothing-*.jsonl"]), tmp_path/"run")

def build_registry(run, tok_dir, bs=16, num_proc=2):
    (run/"src").mkdir(parents=True)
    jsonl(run/"src"/"zh.jsonl", [{"text": ZH[i % 3] * (1 + i % 4)} for i in range(60)])
    jsonl(run/"src"/"en.jsonl", [{"text": EN[i % 2] * (1 + i % 3)} for i in range(30)])
    srcs = [DataSource("zh-a", "path", path=str(run/"src"), files=["zh.jsonl"]),
            DataSource("en-b", "path", lang="en", path=str(run/"src"), files=["en.jsonl"])]
    for s in srcs: prepare_text(s, run, (9, 1))
    register_datasets(registry_path(run), {s.name: registry_entry(s) for s in srcs})
    jobs = [(s.name, sp) for s in srcs for sp in ("train", "dev")]
    rows = encode_files([dataset_paths(run, n, sp) for n, sp in jobs], tok_dir, block_size=bs, num_proc=num_proc, chunk_mb=0.002)
    return dict(zip(jobs, rows))

def test_tokenise_pack_eos_per_document(tmp_path, tok_dir):
    rows = build_registry(tmp_path, tok_dir)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    doc, enc = dataset_paths(tmp_path, "zh-a", "train")
    texts = [json.loads(l)["text"] for l in doc.read_text().splitlines()]
    ds = load_from_disk(str(enc))
    ids = ds.with_format("numpy")[:]["input_ids"]
    assert ids.shape == (len(ds), 16)
    assert str(ds.data.schema.field("input_ids").type) == "fixed_size_list<item: int32>[16]"
    r = rows[("zh-a", "train")]
    n_all = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert r["tokens"] == n_all and r["docs"] == len(texts) == 54
    assert r["blocks"] * 16 + r["dropped_tokens"] == n_all + 2 * len(texts)   # <s> and </s> per document
    flat = ids.ravel()
    # in one chunk: exactly <s> ids </s> per document (ids from the reference tokenizer), in file order, cut every 16 tokens
    want = [i for t in texts for i in [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    one = encode_files([(doc, tmp_path/"one")], tok_dir, block_size=16, num_proc=1, chunk_mb=64)[0]
    got = load_from_disk(str(tmp_path/"one")).with_format("numpy")[:]["input_ids"].ravel().tolist()
    assert got == want[:len(got)] and len(want) - len(got) == one["dropped_tokens"] and one["tokens"] == r["tokens"]
    # one </s> and one <s> per document, except in the < 16 dropped tokens (documents here are >= 7 tokens: at most 3 ends)
    assert len(texts) - 3 <= (flat == tok.eos_token_id).sum() <= len(texts) and len(texts) - 3 <= (flat == tok.bos_token_id).sum() <= len(texts)
    assert registry_path(tmp_path).exists() and read_registry(registry_path(tmp_path))["en-b"]["root"] == "{DATA_DIR}/en/{name}"

def test_mixture_weights_seed_and_errors(tmp_path, tok_dir):
    build_registry(tmp_path, tok_dir)
    n_zh = len(load_from_disk(str(dataset_paths(tmp_path, "zh-a", "train")[1])))
    n_en = len(load_from_disk(str(dataset_paths(tmp_path, "en-b", "train")[1])))
    plan = mixture_plan(tmp_path, ["0.5:zh-a", "2:en-b"])
    assert plan.taken.tolist() == [round(n_zh / 2), 2 * n_en] and abs(plan.share.sum() - 1) < 1e-3
    a, b = load_mixture(tmp_path, "0.5:zh-a 2:en-b", seed=3), load_mixture(tmp_path, "0.5:zh-a 2:en-b", seed=3)
    assert len(a) == plan.taken.sum() and a[:]["input_ids"] == b[:]["input_ids"]
    n_dev = len(load_from_disk(str(dataset_paths(tmp_path, "zh-a", "dev")[1])))
    assert n_dev > 0 and len(load_mixture(tmp_path, "1:zh-a", split="dev")) == n_dev
    for spec, msg in [("x:zh-a", "not weight:name"), ("-1:zh-a", "positive"), ("1:zh-a 1:nope", "unknown dataset 'nope' \\(registered: en-b, zh-a\\)")]:
        with pytest.raises(CmixtralError, match=msg): load_mixture(tmp_path, spec)

def test_failed_tokenisation_leaves_no_dataset(tmp_path, tok_dir):
    p = jsonl(tmp_path/"x.jsonl", [{"text": "fine"}] * 5)
    with open(p, "a") as f: f.write("not json\n")
    with pytest.raises(Exception):
        encode_files([(p, tmp_path/"enc")], tok_dir, block_size=4, num_proc=1)
    assert not (tmp_path/"enc").exists() and [q.name for q in tmp_path.iterdir()] == ["x.jsonl"]

def test_tokenizer_stage_is_resolved_from_the_run_dir(tmp_path, tok_dir):
    with pytest.raises(CmixtralError, match="stage 'vocab' has not finished"): tokenizer_dir(tmp_path, "vocab")
