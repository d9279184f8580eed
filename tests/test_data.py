"The data stage on real files: bad input, the split by position, per-file units and resume, parallel tokenisation with the real Mixtral tokenizer, two-byte ids, mixtures."
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

def encode(run, srcs, tok_dir, **kw):
    "The data stage's encoding of `srcs` into run directory `run`, registered."
    S = DataConfig(datasets=srcs, **{"num_proc": 1, "split": [4, 1], **kw})
    got = encode_sources(srcs, run, tok_dir, S)
    register_datasets(registry_path(run), got["entries"])
    return got

def test_local_shards_split_by_position_and_count_skips(shards, tmp_path, tok_dir):
    root, texts = shards
    src = DataSource("web-zh", "path", path=str(root), files=["data/train-*"])
    r1 = encode(tmp_path/"run", [src], tok_dir, block_size=8)
    assert r1["skipped"]["web-zh"] == {"malformed json": 1, "invalid utf-8": 1, "no text field": 2, "empty text": 1, "not a json object": 1}
    got_train, got_dev = (list(split_texts(tmp_path/"run", "web-zh", s)) for s in ("train", "dev"))
    # document i of its file is dev when i % 5 == 4: the jsonl file's 15 good lines, then the parquet file's rows
    assert got_dev == [texts[i] for i in range(15) if i % 5 == 4] + [texts[15 + i] for i in range(15) if i % 5 == 4]
    assert sorted(got_train + got_dev) == sorted(texts) and len(got_dev) == 6  # every document once, none in both
    rows = {r["split"]: r for r in r1["rows"]}
    assert (rows["train"]["docs"], rows["dev"]["docs"]) == (24, 6)
    assert not list((tmp_path/"run").rglob("*.jsonl"))                       # no copy of the text in the run directory
    before = {p.name: p.read_bytes() for p in (tmp_path/"run"/"data").rglob("*.arrow")}
    again = encode(tmp_path/"run2", [src], tok_dir, block_size=8)
    assert {p.name: p.read_bytes() for p in (tmp_path/"run2"/"data").rglob("*.arrow")} == before   # deterministic
    assert again["rows"] == r1["rows"]

def test_missing_shard_and_truncated_parquet_are_clear_errors(shards, tmp_path, tok_dir):
    root, _ = shards
    pq_file = root/"data"/"train-00001-of-00002.parquet"
    pq_file.write_bytes(pq_file.read_bytes()[:200])
    src = DataSource("web-zh", "path", path=str(root), files=["data/train-*"])
    with pytest.raises(CmixtralError, match="train-00001-of-00002.parquet: cannot read parquet file"):
        encode(tmp_path/"run", [src], tok_dir)
    folder = tmp_path/"run"/"data"/"zh"/"web-zh"
    assert not list(folder.rglob("state.json"))                               # nothing half-written looks complete
    pq_file.unlink()
    with pytest.raises(CmixtralError, match="missing shard"):
        encode(tmp_path/"run", [src], tok_dir)
    with pytest.raises(CmixtralError, match="no files match"):
        encode(tmp_path/"run", [DataSource("x", "path", path=str(root), files=["nothing-*.jsonl"])], tok_dir)

def build_registry(run, tok_dir, bs=16, num_proc=1):
    (run/"src").mkdir(parents=True)
    jsonl(run/"src"/"zh.jsonl", [{"text": ZH[i % 3] * (1 + i % 4)} for i in range(60)])
    jsonl(run/"src"/"en.jsonl", [{"text": EN[i % 2] * (1 + i % 3)} for i in range(30)])
    srcs = [DataSource("zh-a", "path", path=str(run/"src"), files=["zh.jsonl"]),
            DataSource("en-b", "path", lang="en", path=str(run/"src"), files=["en.jsonl"])]
    got = encode(run, srcs, tok_dir, block_size=bs, num_proc=num_proc, chunk_mb=0.002, split=[9, 1])
    return {(r["dataset"], r["split"]): r for r in got["rows"]}

def test_tokenise_pack_eos_per_document(tmp_path, tok_dir):
    rows = build_registry(tmp_path, tok_dir, num_proc=2)                      # small work items on a pool of 2
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = list(split_texts(tmp_path, "zh-a", "train"))
    ds = load_from_disk(str(dataset_paths(tmp_path, "zh-a", "train")[1]))
    ids = ds.with_format("numpy")[:]["input_ids"]
    assert ids.shape == (len(ds), 16)
    assert str(ds.data.schema.field("input_ids").type) == "fixed_size_list<item: uint16>[16]"   # two bytes an id
    r = rows[("zh-a", "train")]
    n_all = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert r["tokens"] == n_all and r["docs"] == len(texts) == 54
    assert r["blocks"] * 16 + r["dropped_tokens"] == n_all + 2 * len(texts)   # <s> and </s> per document
    flat = ids.ravel()
    # in one work item: exactly <s> ids </s> per document (ids from the reference tokenizer), in file order, cut every 16 tokens
    want = [i for t in texts for i in [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    src = DataSource("one", "path", path=str(tmp_path/"src"), files=["zh.jsonl"])
    one = {x["split"]: x for x in encode(tmp_path, [src], tok_dir, block_size=16, chunk_mb=64, split=[9, 1])["rows"]}["train"]
    got = load_from_disk(str(dataset_paths(tmp_path, "one", "train")[1])).with_format("numpy")[:]["input_ids"].ravel().tolist()
    assert got == want[:len(got)] and len(want) - len(got) == one["dropped_tokens"] and one["tokens"] == r["tokens"]
    # one </s> and one <s> per document, except in the < 16 dropped tokens (documents here are >= 7 tokens: at most 3 ends)
    assert len(texts) - 3 <= (flat == tok.eos_token_id).sum() <= len(texts) and len(texts) - 3 <= (flat == tok.bos_token_id).sum() <= len(texts)
    assert registry_path(tmp_path).exists() and read_registry(registry_path(tmp_path))["en-b"]["root"] == "{DATA_DIR}/en/{name}"

def test_two_byte_ids_reach_the_model_as_int64():
    "Ids stored as uint16 (up to 65,535) come out of the training collator as the int64 the embedding takes."
    from cmixtral.training import collate_blocks
    rows = [{"input_ids": np.array([1, 40000, 65535, 2], np.uint16)}, {"input_ids": np.array([1, 32768, 7, 2], np.uint16).tolist()}]
    b = collate_blocks(rows)
    assert str(b["input_ids"].dtype) == "torch.int64" and b["input_ids"].tolist() == [[1, 40000, 65535, 2], [1, 32768, 7, 2]]
    assert token_dtype(57_000) == "uint16" and token_dtype(70_000) == "int32"

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

def test_a_bad_line_midway_is_counted_not_fatal(tmp_path, tok_dir):
    p = jsonl(tmp_path/"x.jsonl", [{"text": "fine"}] * 5)
    with open(p, "a") as f: f.write("not json\n")
    got = encode(tmp_path, [DataSource("x", "path", path=str(tmp_path), files=["x.jsonl"])], tok_dir, block_size=4)
    assert got["skipped"]["x"] == {"malformed json": 1} and sum(r["docs"] for r in got["rows"]) == 5

def test_tokenizer_stage_is_resolved_from_the_run_dir(tmp_path, tok_dir):
    with pytest.raises(CmixtralError, match="stage 'vocab' has not finished"): tokenizer_dir(tmp_path, "vocab")

def test_a_killed_stage_resumes_at_the_next_file_with_the_same_dataset(tmp_path, tok_dir):
    "SIGKILL mid-way (at the first file's record, others in flight), then the rerun: the finished file skipped, same blocks."
    import signal, subprocess, sys
    src_dir = tmp_path/"src"; src_dir.mkdir()
    for k in range(4):
        jsonl(src_dir/f"part-{k}.jsonl", [{"text": f"{ZH[i % 3]}第{k}卷第{i}篇。" * (1 + i % 9)} for i in range(400)])
    kw = dict(block_size=32, chunk_mb=0.004, num_proc=2, split=[9, 1])
    srcs = [DataSource("web", "path", path=str(src_dir), files=["part-*.jsonl"])]
    want = encode(tmp_path/"whole", srcs, tok_dir, **{**kw, "num_proc": 1})  # the same for any num_proc
    run = tmp_path/"run"
    # the job SIGKILLs its whole process group (itself and its workers) the moment its first file is recorded
    code = (f"import os, signal\nfrom cmixtral.core import Units\nfrom cmixtral.data import *\n"
            f"_finish = Units.finish\n"
            f"def finish(self, *a, **k):\n    _finish(self, *a, **k)\n    os.killpg(0, signal.SIGKILL)\n"
            f"Units.finish = finish\n"
            f"if __name__ == '__main__':\n"
            f"    S = DataConfig(datasets={srcs!r}, **{kw!r})\n"
            f"    encode_sources(S.datasets, {str(run)!r}, {str(tok_dir)!r}, S)\n")
    (tmp_path/"job.py").write_text(code)
    p = subprocess.run([sys.executable, str(tmp_path/"job.py")], start_new_session=True, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    units = run/"data"/"units"
    first = {q.name: q.stat().st_mtime_ns for q in units.glob("web_*.json")}
    assert len(first) == 1, sorted(first)                                     # killed with three files still to do
    assert not list(run.rglob("state.json"))                                  # and no dataset that looks complete
    got = encode(run, srcs, tok_dir, **kw)
    assert len(got["done"]) == len(first) and len(got["ran"]) == 4 - len(first)
    assert all(q.stat().st_mtime_ns == first[q.name] for q in units.glob("web_*.json") if q.name in first)
    assert got["rows"] == want["rows"]
    for split in ("train", "dev"):
        a, b = (load_from_disk(str(dataset_paths(r, "web", split)[1])).with_format("numpy")[:]["input_ids"] for r in (tmp_path/"whole", run))
        assert np.array_equal(a, b), split
