"SFT stage: label masks on the real Mixtral tokenizer, chatterbot data, QLoRA merge vs adapter logits, native layout round trip, generation."
import json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
from cmixtral.core import *
from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, load_mixtral_tokenizer, package_file
from cmixtral.pretrain import LoraSettings, QuantSettings, cpu_safe_4bit, load_qlora_model
from cmixtral.sft import *
from cmixtral.sft import _hf_tensors

SPEC = BaseModelSpec(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)

@pytest.fixture(scope="module")
def tok():
    return load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))

@pytest.fixture(scope="module")
def small(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("small")/"base"
    m = build_tiny_mixtral(SPEC); m.save_pretrained(d); tok.save_pretrained(d)
    return d

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
    with pytest.raises(CmixtralError, match=r"bad.jsonl:2: no usable field"):
        read_sft_records(SftSource("bad", "path", str(tmp_path), ["bad.jsonl"]))
    recs = chatterbot_records(package_file("chatterbot_corpus", "data/chinese"))
    long = [r for r in recs if len(encode_example(r, tok)["input_ids"]) > 48]
    assert long, "the Chinese chatterbot data has conversations longer than 48 tokens"
    r = encode_sft(recs[:50] + long[:2], tok, tmp_path/"enc", max_len=48, block_size=48)
    assert r["truncated"] == sum(len(encode_example(x, tok)["input_ids"]) > 48 for x in recs[:50] + long[:2]) and r["dropped"] == 0
    from datasets import load_from_disk
    ds = load_from_disk(str(tmp_path/"enc"))
    assert set(len(x) for x in ds["input_ids"]) == {48} and sum(l != -100 for row in ds["labels"] for l in row) == r["trained_tokens"]

def test_qlora_merge_equals_adapter_on_dequantised_base(small, tmp_path):
    P = type("P", (), {"quant": QuantSettings(), "lora": LoraSettings(r=4, alpha=8, dropout=0.0), "train": type("T", (), {"gradient_checkpointing": False})()})()
    pm = cpu_safe_4bit(load_qlora_model(small, P))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n or "modules_to_save" in n: p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(tmp_path/"adapter")
    deq = dequantize_to_dir(small, tmp_path/"deq")
    info = merge_adapter(deq, tmp_path/"adapter", tmp_path/"merged", max_shard_size="300kB")
    assert info["shards"] > 1 and not any(p.name.startswith("adapter") for p in (tmp_path/"merged").iterdir())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path/"merged").eval()          # plain transformers, no peft
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(deq), tmp_path/"adapter").eval()
    x = torch.tensor([[1, 415, 2936, 9060, 285, 28705, 29242, 28914]])
    with torch.no_grad():
        lm, lr, l4 = merged(x).logits, ref(x).logits, pm.eval()(x).logits
    assert (lm - lr).abs().max() < 1e-4
    assert (lm - l4).abs().max() < 1e-3          # and the 4-bit adapter model itself (the weights it was trained on)

def test_merge_against_wrong_base_writes_nothing(small, tmp_path):
    pm = lora_model(build_tiny_mixtral(SPEC)); pm.save_pretrained(tmp_path/"adapter")
    build_tiny_mixtral(SPEC, vocab_size=32064).save_pretrained(tmp_path/"wrong")
    (tmp_path/"out").mkdir(); (tmp_path/"out"/"keep.txt").write_text("old")
    with pytest.raises(CmixtralError, match=r"vocabulary mismatch: .* \(32000, 64\), the base's is \(32064, 64\)"):
        merge_adapter(tmp_path/"wrong", tmp_path/"adapter", tmp_path/"out")
    assert [p.name for p in (tmp_path/"out").iterdir()] == ["keep.txt"]

def test_native_round_trip_and_md5(small, tmp_path):
    info = hf_to_native(small, tmp_path/"native")
    assert info["md5"]["tokenizer.model"] == MIXTRALKIT_MD5["tokenizer.model"]
    assert json.loads((tmp_path/"native"/"params.json").read_text())["moe"] == {"num_experts_per_tok": 2, "num_experts": 8}
    sd = torch.load(tmp_path/"native"/"consolidated.00.pth", weights_only=True)
    hf = load_file(str(small/"model.safetensors"))
    assert torch.equal(sd["layers.1.block_sparse_moe.w2"][128:256], hf["model.layers.1.block_sparse_moe.experts.1.w2.weight"].T)
    assert torch.equal(permute_rope(sd["layers.0.attention.wk.weight"], 2), hf["model.layers.0.self_attn.k_proj.weight"])
    native_to_hf(tmp_path/"native", tmp_path/"back", max_shard_size="500kB")
    back = dict(_hf_tensors(tmp_path/"back"))
    assert sorted(back) == sorted(hf) and all(torch.equal(back[k], v) for k, v in hf.items())
    assert load_mixtral_tokenizer(tmp_path/"back")("我的名字是")["input_ids"] == [1, 28705, 29242, 28914, 29046, 29031, 28971]
    p = tmp_path/"native"/"consolidated.00.pth"; b = bytearray(p.read_bytes()); b[-64] ^= 1; p.write_bytes(bytes(b))
    with pytest.raises(CmixtralError, match="consolidated.00.pth: md5 .* does not match"): native_to_hf(tmp_path/"native", tmp_path/"back2")
    assert not (tmp_path/"back2").exists()
    with pytest.raises(CmixtralError, match="consolidated.00.pth: md5"): verify_md5(tmp_path/"native", MIXTRALKIT_MD5)

def test_generate_batch_stream_and_4bit(small):
    mt = load_for_generation(small)
    a = generate(None, ["我的名字是", "The capital of France is"], max_new_tokens=6, model=mt)
    assert len(a) == 2 and a == generate(None, ["我的名字是", "The capital of France is"], max_new_tokens=6, model=mt)
    got = []; s = generate(None, "我的名字是", max_new_tokens=6, stream=got.append, model=mt)
    assert "".join(got).rstrip("\n") == s[0]
    q = generate(small, ["我的名字是"], max_new_tokens=4, load_in_4bit=True)        # from the directory, NF4 on CPU
    assert len(q) == 1 and isinstance(q[0], str)
    with pytest.raises(CmixtralError, match="not an HF model directory"): generate(small.parent, "x")
