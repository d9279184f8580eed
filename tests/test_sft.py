"SFT stage: label masks on the real Mixtral tokenizer, chatterbot data, records from files."
import pytest
from cmixtral.core import *
from cmixtral.assets import package_file
from cmixtral.sft import *

def test_label_mask_token_by_token(tok):
    rec = {"conversations": [{"from": "system", "value": "简短回答"}, {"from": "human", "value": "中国的首都是哪里?"},
                             {"from": "gpt", "value": "北京。"}, {"from": "human", "value": "And France?"}, {"from": "gpt", "value": "Paris."}]}
    ex = encode_example(rec, tok, "mixtral")
    want_ids, want_labels = [tok.bos_token_id], [-100]
    for text, trained in [("[INST] 简短回答\n\n中国的首都是哪里? [/INST]", False), ("北京。", True), ("[INST] And France? [/INST]", False), ("Paris.", True)]:
        ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if trained else [])
        want_ids += ids; want_labels += ids if trained else [-100] * len(ids)
    assert ex["input_ids"] == want_ids and ex["labels"] == want_labels
    assert tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]) == "北京。</s> Paris.</s>"
    al = encode_example({"instruction": "翻译", "input": "你好", "output": "Hello"}, tok, "alpaca")
    assert tok.decode([t for t, l in zip(al["input_ids"], al["labels"]) if l != -100]) == "Hello</s>"
    assert "### Instruction:\n翻译\n\n你好" in tok.decode(al["input_ids"])
    tx = encode_example({"text": "我的名字是小明。"}, tok)
    assert tx["labels"][0] == -100 and tx["labels"][1:] == tx["input_ids"][1:]      # text records: every token but <s>

def test_bad_records_and_truncation(tok, tmp_path):
    with pytest.raises(CmixtralError, match="no usable field"): encode_example({"prompt": "x", "completion": "y"}, tok)
    p = tmp_path/"bad.jsonl"; p.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(CmixtralError, match=r"bad.jsonl: record 2: no usable field"):
        read_sft_records(SftSource("bad", "path", str(tmp_path), ["bad.jsonl"]))
    recs = chatterbot_records(package_file("chatterbot_corpus", "data/chinese"))
    long = [r for r in recs if len(encode_example(r, tok)["input_ids"]) > 48]
    assert long, "the Chinese chatterbot data has conversations longer than 48 tokens"
    r = encode_sft(recs[:50] + long[:2], tok, tmp_path/"enc", max_len=48, block_size=48)
    assert r["truncated"] == sum(len(encode_example(x, tok)["input_ids"]) > 48 for x in recs[:50] + long[:2]) and r["dropped"] == 0
    from datasets import load_from_disk
    ds = load_from_disk(str(tmp_path/"enc"))
    assert set(len(x) for x in ds["input_ids"]) == {48} and sum(l != -100 for row in ds["labels"] for l in row) == r["trained_tokens"]

def test_default_chatterbot_source_works_in_a_fresh_process():
    "A library caller (no notebook) reading the default SFT source: every name the function needs is imported."
    import subprocess, sys
    code = ("from cmixtral.sft import SftSource, read_sft_records; "
            "print(len(read_sft_records(SftSource('chatterbot-zh', max_records=5))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "5", r.stderr[-500:]
