"Checkpoints: one 4-bit model everywhere, the streaming merge against peft's, the wrong base, MixtralKit's layout."
import json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from cmixtral.core import CmixtralError, read_json
from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file
from cmixtral.checkpoint import *
from cmixtral.evaluate import EvalConfig, eval_quant, lm_eval_model, load_model as eval_load_model
from cmixtral.pretrain import PretrainConfig
from cmixtral.training import load_qlora_model

SPEC = BaseModelSpec(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)

@pytest.fixture(scope="module")
def small(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("small")/"base"
    build_tiny_mixtral(SPEC).save_pretrained(d)
    tok.save_pretrained(d)
    return d

def test_one_4bit_model_for_eval_lm_eval_generation_and_training(small):
    "Every path that loads in 4 bits quantises the same modules the same way; gate and lm_head never."
    from cmixtral.core import Config
    cfg = Config({"name": "t", "pretrain": {"quant": {"load_in_4bit": True, "compute_dtype": "float32"}}})
    S = EvalConfig(load_in_4bit=True, batch_size=2, max_length=64)
    Q = eval_quant(cfg, S)
    spec = {"name": "base", "model": str(small), "tokenizer": str(small), "adapter": None}
    direct, tok = eval_load_model(spec, quant=Q)
    harness = lm_eval_model(direct, tok, S).model                      # what lm-eval scores
    generation, _ = load_pair(small, quant=QuantSettings(compute_dtype="float32"))   # cmixtral generate --load-in-4bit
    training = load_qlora_model(small, PretrainConfig(quant=QuantSettings(compute_dtype="float32")))
    maps = [quantised_modules(m) for m in (direct, harness, generation, training)]
    assert len(maps[0]) == 2 * (4 + 8 * 3) and set(maps[0].values()) == {"nf4"}
    assert all(m == maps[0] for m in maps[1:])
    for m in (direct, training):
        names = [n for n, _ in m.named_modules()]
        assert any(n.endswith("block_sparse_moe.gate") for n in names)
        assert not any(k.endswith(("gate", "lm_head")) for k in quantised_modules(m))
        dq = [mod.weight.quant_state for n, mod in m.named_modules() if type(mod).__name__ == "Linear4bit"]
        assert all(s.nested for s in dq)                                 # double quantisation everywhere

def test_streaming_merge_equals_the_adapter_on_the_dequantised_base(small, tmp_path):
    pm = load_qlora_model(small, PretrainConfig(quant=QuantSettings(compute_dtype="float32")), False)
    perturb_adapter(pm, seed=0)
    pm.save_pretrained(tmp_path/"adapter")
    deq = tmp_path/"deq"
    assert dequantize_to_dir(small, deq, QuantSettings(compute_dtype="float32"))["quantised_tensors"] == 2 * (4 + 8 * 3)
    info = merge_adapter(deq, tmp_path/"adapter", tmp_path/"merged", max_shard_size="300kB")
    assert info["shards"] > 1 and not any(p.name.startswith("adapter") for p in (tmp_path/"merged").iterdir())
    merged = load_model(tmp_path/"merged")                               # a plain checkpoint: no peft needed
    ref = load_model(deq, adapter=tmp_path/"adapter")
    x = torch.tensor([[1, 415, 2936, 9060, 285, 28705, 29242, 28914]])
    with torch.no_grad():
        lm, lr, l4 = merged(x).logits, ref(x).logits, pm.eval()(x).logits
    assert (lm - lr).abs().max() < 1e-4
    assert (lm - l4).abs().max() < 1e-3          # and the 4-bit adapter model itself (the weights it was trained on)

def test_merge_against_wrong_base_writes_nothing(small, tmp_path):
    lora_model(build_tiny_mixtral(SPEC)).save_pretrained(tmp_path/"adapter")
    build_tiny_mixtral(SPEC, vocab_size=32064).save_pretrained(tmp_path/"wrong")
    (tmp_path/"out").mkdir()
    (tmp_path/"out"/"keep.txt").write_text("old")
    with pytest.raises(CmixtralError, match=r"vocabulary mismatch: .* \(32000, 64\), the base's is \(32064, 64\)"):
        merge_adapter(tmp_path/"wrong", tmp_path/"adapter", tmp_path/"out")
    assert [p.name for p in (tmp_path/"out").iterdir()] == ["keep.txt"]

def test_rank_pattern_of_layer_0_does_not_reach_layer_10(tmp_path):
    "peft matches pattern keys as whole dotted suffixes; a substring search would scale layer 10 by layer 0's alpha/r."
    deep = BaseModelSpec(hidden_size=32, intermediate_size=32, num_hidden_layers=12, num_attention_heads=4,
                         num_key_value_heads=2, num_local_experts=2)
    build_tiny_mixtral(deep, vocab_size=128).save_pretrained(tmp_path/"deep")
    pm = lora_model(build_tiny_mixtral(deep, vocab_size=128), rank_pattern={"0.self_attn.q_proj": 6},
                    alpha_pattern={"0.self_attn.q_proj": 3})
    perturb_adapter(pm).save_pretrained(tmp_path/"adapter")
    merge_adapter(tmp_path/"deep", tmp_path/"adapter", tmp_path/"merged")
    ref = pm.merge_and_unload().state_dict()
    got = dict(iter_tensors(tmp_path/"merged"))
    assert max((ref[k] - v).abs().max().item() for k, v in got.items()) < 1e-5

def test_native_round_trip_and_md5(small, tmp_path):
    info = hf_to_native(small, tmp_path/"native")
    assert info["md5"]["tokenizer.model"] == MIXTRALKIT_MD5["tokenizer.model"]
    params = json.loads((tmp_path/"native"/"params.json").read_text())
    assert params["moe"] == {"num_experts_per_tok": 2, "num_experts": 8}
    sd = torch.load(tmp_path/"native"/"consolidated.00.pth", weights_only=True)
    hf = load_file(str(small/"model.safetensors"))
    w2 = hf["model.layers.1.block_sparse_moe.experts.1.w2.weight"].T
    assert torch.equal(sd["layers.1.block_sparse_moe.w2"][128:256], w2)
    assert torch.equal(permute_rope(sd["layers.0.attention.wk.weight"], 2), hf["model.layers.0.self_attn.k_proj.weight"])
    native_to_hf(tmp_path/"native", tmp_path/"back", max_shard_size="500kB")
    back = dict(iter_tensors(tmp_path/"back"))
    assert sorted(back) == sorted(hf) and all(torch.equal(back[k], v) for k, v in hf.items())
    ids = load_mixtral_tokenizer(tmp_path/"back")("我的名字是")["input_ids"]
    assert ids == [1, 28705, 29242, 28914, 29046, 29031, 28971]
    p = tmp_path/"native"/"consolidated.00.pth"
    b = bytearray(p.read_bytes())
    b[-64] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(CmixtralError, match="consolidated.00.pth: md5 .* does not match"):
        native_to_hf(tmp_path/"native", tmp_path/"back2")
    assert not (tmp_path/"back2").exists()

def test_placement_and_vocabulary_errors(small, tmp_path):
    assert device_map("train", n_gpus=4, local_rank=2) == {"": 2}
    assert device_map("forward", n_gpus=4) == "auto" and device_map("forward", n_gpus=0) == {"": "cpu"}
    build_tiny_mixtral(SPEC, vocab_size=1000).save_pretrained(tmp_path/"narrow")
    with pytest.raises(CmixtralError, match="the tokenizer has 32000 tokens but the model only 1000"):
        load_pair(tmp_path/"narrow", tokenizer=small)
    with pytest.raises(CmixtralError, match="not a Hugging Face model directory"):
        load_model(tmp_path)

def _sharded(small, out, max_shard_size="300kB"):
    "The small base cut into several shards (with its config), as Mixtral-8x7B's 19 are."
    w = ShardWriter(out, max_shard_size)
    for k, v in iter_tensors(small):
        w.add(k, v)
    w.close()
    copy_model_files(small, out)
    return out

_raw = stored_tensor_bytes

def test_grow_model_edits_two_tensors_and_links_the_other_shards(small, tok, tmp_path):
    base = _sharded(small, tmp_path/"base")
    rows = {EMBED: torch.randn(7, 64), HEAD: torch.randn(7, 64)}
    grow_model(base, tmp_path/"grown", rows, tok, extra={"source.json": {"x": 1}})
    out, where = tmp_path/"grown", tensor_files(base)
    assert read_json(out/"config.json")["vocab_size"] == 32007 and read_json(out/"source.json") == {"x": 1}
    got = dict(iter_tensors(out))
    for k in (EMBED, HEAD):
        assert torch.equal(got[k], torch.cat([load_file(str(where[k]))[k], rows[k]]))
    for k, f in where.items():                                   # every other tensor: the base's bytes
        if k not in (EMBED, HEAD):
            assert _raw(f, k) == _raw(out/f.name, k)
    grown_files = {where[EMBED].name, where[HEAD].name}
    for f in shard_files(base):                                  # the other shards are the base's files
        assert (f.stat().st_ino == (out/f.name).stat().st_ino) == (f.name not in grown_files)
    idx, idx0 = (read_json(d/"model.safetensors.index.json") for d in (out, base))
    assert idx["weight_map"] == idx0["weight_map"]
    assert idx["metadata"]["total_size"] == idx0["metadata"]["total_size"] + 2 * 7 * 64 * 4
    m, t = load_pair(out)
    assert m.config.vocab_size == 32007 and len(t) == 32000     # the tokenizer passed (here the old one)
    grow_model(base, tmp_path/"same", {})                        # no rows: the base itself, every shard linked
    assert all(f.stat().st_ino == (tmp_path/"same"/f.name).stat().st_ino for f in shard_files(base))

def test_grow_model_keeps_the_stored_dtype_and_refuses_bad_rows(tmp_path):
    spec = BaseModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    save_model(build_tiny_mixtral(spec, vocab_size=512).to(torch.bfloat16), tmp_path/"bf16")
    rows = {EMBED: torch.randn(3, 32), HEAD: torch.randn(3, 32)}
    grow_model(tmp_path/"bf16", tmp_path/"g", rows)
    got = dict(iter_tensors(tmp_path/"g"))
    assert got[HEAD].dtype == torch.bfloat16 and torch.equal(got[HEAD][512:], rows[HEAD].bfloat16())
    (tmp_path/"out").mkdir()
    (tmp_path/"out"/"keep.txt").write_text("old")
    for bad, msg in (({EMBED: rows[EMBED]}, "needs new rows for"),
                     ({EMBED: rows[EMBED], HEAD: rows[HEAD][:1]}, "same number of new rows"),
                     ({EMBED: torch.zeros(3, 8), HEAD: torch.zeros(3, 8)}, "have 32 columns")):
        with pytest.raises(CmixtralError, match=msg):
            grow_model(tmp_path/"bf16", tmp_path/"out", bad)
    assert [p.name for p in (tmp_path/"out").iterdir()] == ["keep.txt"]
    tied = build_tiny_mixtral(spec, vocab_size=512)
    tied.config.tie_word_embeddings = True
    tied.tie_weights()
    save_model(tied, tmp_path/"tied")
    with pytest.raises(CmixtralError, match="lm_head is tied to embed_tokens"):
        grow_model(tmp_path/"tied", tmp_path/"out", rows)

def test_grow_model_from_a_hub_id_offline(small, tmp_path):
    "A hub id resolves to its cached snapshot; the output links the cache's blobs, not the snapshot's symlinks."
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from hub_cache import cache_model_dir, repo_dir, run_offline
    home = tmp_path/"hf"
    cache_model_dir(home, "org/tiny-mixtral", _sharded(small, tmp_path/"base"))
    code = ("import torch; from cmixtral.checkpoint import *; "
            f"grow_model('org/tiny-mixtral', {str(tmp_path/'out')!r}, "
            "{EMBED: torch.zeros(2, 64), HEAD: torch.zeros(2, 64)}); print('ok')")
    r = run_offline(home, code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    blobs = {p.stat().st_ino for p in (repo_dir(home, "org/tiny-mixtral")/"blobs").iterdir()}
    linked = [p for p in (tmp_path/"out").glob("*.safetensors") if p.stat().st_ino in blobs]
    assert len(linked) == len(list((tmp_path/"out").glob("*.safetensors"))) - 2
    assert read_json(tmp_path/"out"/"config.json")["vocab_size"] == 32002
