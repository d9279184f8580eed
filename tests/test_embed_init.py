"Embedding initialisation on real tokenizers and a real (small) MixtralForCausalLM: no mocks."
import copy
from pathlib import Path
import pytest, torch
from sentencepiece import sentencepiece_model_pb2 as spm_pb
from transformers import AutoModelForCausalLM, AutoTokenizer
from cmixtral.core import CmixtralError, Config, StageRun, read_json, seed_everything
from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file
from cmixtral.checkpoint import (EMBED, HEAD, grow_model, stored_tensor_bytes, iter_tensors, load_mixtral_tokenizer, load_model,
                                 safetensors_header, save_model, stored_dtype, token_matrices_model)
from cmixtral.embed_init import (METHODS, bias_direction, check_extends, embed_init, final_hidden, init_model_path,
                                 init_rows, rows_appended,
                                 new_token_mass, peak_extra_bytes, rest_of_spelling_logprob, spell_new_tokens)

NEW_PIECES = ["中国", "人民", "中国人民", "龘", "经济发展", "▁北京", "的发展"]
TEXT = "中国人民的经济发展，北京的发展。"
EN = "The quick brown fox jumps over the lazy dog. "

def _spm(out: Path, edit) -> Path:
    m = spm_pb.ModelProto(); m.ParseFromString(package_file("mistral_common", "data/tokenizer.model.v1").read_bytes())
    edit(m)
    out.mkdir(parents=True, exist_ok=True); (out/"tokenizer.model").write_bytes(m.SerializeToString())
    return out/"tokenizer.model"

def _append(pieces):
    def edit(m):
        for s in pieces:
            p = m.pieces.add(); p.piece, p.score, p.type = s, 0.0, spm_pb.ModelProto.SentencePiece.NORMAL
    return edit

@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    old = load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
    new = load_mixtral_tokenizer(_spm(d/"new", _append(NEW_PIECES)))
    return old, new

@pytest.fixture(scope="module")
def base():
    return build_tiny_mixtral(BaseModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1), seed=1)

def test_spellings_have_no_bos_and_no_prefix_space(toks):
    old, new = toks
    sp = spell_new_tokens(old, new, 32000)
    names = [old.convert_ids_to_tokens(s) for s in sp]
    assert names[0] == ["中", "国"] and names[2] == ["中", "国", "人", "民"]
    assert names[3] == ["<0xE9>", "<0xBE>", "<0x98>"]               # byte fallback for a character Mixtral lacks
    assert names[5][0].startswith("▁")                              # a piece that carries its own space keeps it
    assert all(old.bos_token_id not in s for s in sp)

@pytest.mark.parametrize("method", METHODS)
def test_old_rows_bitwise_identical_and_model_runs(toks, base, method):
    old, new = toks
    m = copy.deepcopy(base)
    r = embed_init(m, old, new, method, pad_to_multiple_of=64, chunk=3, calib_texts={"zh": [TEXT * 30], "en": [EN * 5]}, block_size=32)
    assert r["rows"] == 32064 and r["padding_rows"] == 32064 - len(new) and not r["tied"]
    assert torch.equal(m.model.embed_tokens.weight[:32000], base.model.embed_tokens.weight)
    assert torch.equal(m.lm_head.weight[:32000], base.lm_head.weight)
    ids = new(TEXT, return_tensors="pt").input_ids
    assert (ids >= 32000).any()
    with torch.no_grad(): logits = m(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 32064) and torch.isfinite(logits).all()
    out = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=new.eos_token_id, output_router_logits=False)
    assert out.shape == (1, ids.shape[1] + 4)

def test_new_token_gets_exact_mean_of_its_pieces(toks, base):
    old, new = toks
    m = copy.deepcopy(base); embed_init(m, old, new, "mean", 64, chunk=2)
    sp = spell_new_tokens(old, new, 32000)
    for W, W0 in ((m.model.embed_tokens.weight, base.model.embed_tokens.weight), (m.lm_head.weight, base.lm_head.weight)):
        for t, s in enumerate(sp):
            ref = W0[s[0]].clone()
            for i in s[1:]: ref += W0[i]
            assert torch.equal(W[32000 + t], ref / len(s)), (t, s)
        # padding rows are the mean of the old rows, never a tokenizer id
        assert torch.allclose(W[len(new):], W0.mean(0).expand(32064 - len(new), -1), atol=1e-6)

def test_normal_and_global_mean(toks, base):
    old, new = toks
    m = copy.deepcopy(base); embed_init(m, old, new, "global_mean", 0)
    assert m.lm_head.weight.shape[0] == len(new)
    assert torch.allclose(m.lm_head.weight[32000:], base.lm_head.weight.mean(0).expand(len(new) - 32000, -1), atol=1e-6)
    m = copy.deepcopy(base); embed_init(m, old, new, "normal", 0)
    new_rows = m.model.embed_tokens.weight[32000:]
    assert new_rows.std().item() < 0.05 and not torch.equal(new_rows[0], new_rows[1])
    m = copy.deepcopy(base); embed_init(m, old, new, "mean_input", 0)       # mean rows to read, normal rows to predict
    sp = spell_new_tokens(old, new, 32000)
    assert torch.allclose(m.model.embed_tokens.weight[32000], base.model.embed_tokens.weight[sp[0]].mean(0), atol=1e-7)
    head = m.lm_head.weight[32000:]
    assert head.std().item() < 0.05 and not torch.allclose(head[0], base.lm_head.weight[sp[0]].mean(0), atol=1e-3)

def test_calibrated_matches_frequency(toks, base):
    old, new = toks
    m = copy.deepcopy(base)
    r = embed_init(m, old, new, "mean_calibrated", 0, calib_texts={"zh": [TEXT * 40], "en": [EN * 5]}, block_size=32)["calibration"]
    assert abs(r["new_mass_after"] - r["new_token_freq"]) < 1e-3
    # the mass measured again on the calibration text agrees with the calibration's own measure
    zh_mass = new_token_mass(m, new, [TEXT * 40], 32000, 32, max_positions=r["positions"])
    assert abs(zh_mass - r["new_mass_after"]) < 1e-4
    # on English, which the new Chinese pieces never spell, the model expects them less often than on Chinese
    assert new_token_mass(m, new, ["The quick brown fox jumps over the lazy dog. " * 20], 32000, 32) < zh_mass

def test_spelling_rows_are_first_piece_lowered_by_the_rest(toks, base):
    old, new = toks
    sp = spell_new_tokens(old, new, 32000)
    rest = rest_of_spelling_logprob(base, sp, 32000, old.bos_token_id)
    assert (rest < 0).all()                                            # every new token here has 2+ pieces
    m = copy.deepcopy(base)
    r = embed_init(m, old, new, "spelling", 0, chunk=2, calib_texts={"zh": [TEXT * 40], "en": [EN * 5]}, block_size=32)
    beta = r["calibration"]["beta"]
    assert abs(r["calibration"]["new_mass_after"] - r["calibration"]["new_token_freq"]) < 1e-3
    u = bias_direction(torch.cat([final_hidden(m, new, [TEXT * 40], 32), final_hidden(m, new, [EN * 5], 32)]))       # hidden states do not depend on lm_head
    W, W0 = m.lm_head.weight, base.lm_head.weight
    for t, s in enumerate(sp):
        assert torch.allclose(W[32000 + t], W0[s[0]] + (rest[t] + beta) * u, atol=1e-5), (t, s)
        assert torch.allclose(m.model.embed_tokens.weight[32000 + t], base.model.embed_tokens.weight[s].mean(0), atol=1e-7)

def test_first_piece_rows_keep_english_probability(toks, base):
    old, new = toks
    sp = spell_new_tokens(old, new, 32000)
    m = copy.deepcopy(base)
    r = embed_init(m, old, new, "first_piece", 0, calib_texts={"zh": [TEXT * 40], "en": [EN * 5]}, block_size=32)
    u = bias_direction(torch.cat([final_hidden(m, new, [TEXT * 40], 32), final_hidden(m, new, [EN * 5], 32)]))
    for t, s in enumerate(sp):
        assert torch.allclose(m.lm_head.weight[32000 + t], base.lm_head.weight[s[0]] + r["calibration"]["beta"] * u, atol=1e-5)

def test_tied_model(toks):
    old, new = toks
    m = build_tiny_mixtral(BaseModelSpec(hidden_size=32, intermediate_size=64))
    m.config.tie_word_embeddings = True; m.tie_weights()
    w0 = m.model.embed_tokens.weight.detach().clone()
    r = embed_init(m, old, new, "mean", 64)
    assert r["tied"] and m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert torch.equal(m.model.embed_tokens.weight[:32000], w0)
    t = build_tiny_mixtral(BaseModelSpec(hidden_size=32, intermediate_size=64))
    t.config.tie_word_embeddings = True; t.tie_weights()
    for method in ("mean_calibrated", "spelling"):
        with pytest.raises(CmixtralError, match="untied lm_head"):
            embed_init(t, old, new, method, 0, calib_texts={"zh": [TEXT * 40], "en": [EN * 5]}, block_size=32)
    assert t.model.embed_tokens.weight.shape[0] == 32000                  # refused before anything changed

def test_saved_pair_reloads_with_identical_logits(toks, base, tmp_path):
    old, new = toks
    m = copy.deepcopy(base); embed_init(m, old, new, "mean", 64)
    m.save_pretrained(tmp_path, safe_serialization=True); new.save_pretrained(tmp_path)
    assert (tmp_path/"model.safetensors").exists()
    m2, t2 = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert t2(TEXT).input_ids == new(TEXT).input_ids and len(t2) == len(new)
    ids = t2(TEXT, return_tensors="pt").input_ids
    with torch.no_grad(): assert torch.equal(m.eval()(input_ids=ids).logits, m2.eval()(input_ids=ids).logits)

def test_refuses_tokenizer_that_changes_old_ids(toks, base, tmp_path):
    old, _ = toks
    def swap(m): m.pieces[1000].piece, m.pieces[1001].piece = m.pieces[1001].piece, m.pieces[1000].piece
    bad = load_mixtral_tokenizer(_spm(tmp_path/"bad", lambda m: (swap(m), _append(["中国"])(m))))
    with pytest.raises(CmixtralError, match=r"does not extend the old one: 2 old tokens changed id \(first: '.*' was 1000"):
        check_extends(old, bad)
    m = copy.deepcopy(base)
    with pytest.raises(CmixtralError, match="does not extend"): embed_init(m, old, bad, "mean")
    assert m.model.embed_tokens.weight.shape[0] == 32000                  # refused before anything changed
    with pytest.raises(CmixtralError, match="fewer than the old one's"): check_extends(toks[1], old)

def test_run_dir_readers(tmp_path):
    with pytest.raises(CmixtralError, match="stage 'embed_init' has not finished"): init_model_path(tmp_path)
    StageRun(tmp_path, "embed_init", Config({"name": "t"}), {}).finish()
    assert init_model_path(tmp_path) == tmp_path/"embed_init"/"model"

def test_peak_memory_full_scale():
    pm = peak_extra_bytes(32000, 57024, 4096, 2, 1024)
    assert pm["peak_bytes"] == pm["resize_bytes"] == 57024 * 4096 * 2     # ~446 MiB: one grown bf16 matrix

_raw = stored_tensor_bytes

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["mean", "normal"])
def test_grown_model_equals_the_loaded_initialised_and_saved_one(toks, base, tmp_path, dtype, method):
    "grow_model from init_rows writes what loading the base, embed_init and save_model wrote, bit for bit."
    old, new = toks
    save_model(copy.deepcopy(base).to(dtype), tmp_path/"base")
    seed_everything(3)                                         # the old way: load in float32, initialise, save
    m = load_model(tmp_path/"base", dtype="float32")
    embed_init(m, old, new, method, 64)
    save_model(m.to(stored_dtype(tmp_path/"base")), tmp_path/"loaded", new)
    seed_everything(3)                                         # the new way: rows from the two matrices
    rows, summary = init_rows(tmp_path/"base", old, new, method, 64)
    grow_model(tmp_path/"base", tmp_path/"grown", rows, new)
    a, b = dict(iter_tensors(tmp_path/"loaded")), dict(iter_tensors(tmp_path/"grown"))
    assert sorted(a) == sorted(b) and summary["rows"] == 32064
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype == dtype for k in a)
    f0, f1 = tmp_path/"base"/"model.safetensors", tmp_path/"grown"/"model.safetensors"
    assert all(_raw(f0, k) == _raw(f1, k) for k in a if k not in (EMBED, HEAD))   # untouched: the base's bytes
    assert _raw(f1, EMBED).startswith(_raw(f0, EMBED)) and _raw(f1, HEAD).startswith(_raw(f0, HEAD))
    assert read_json(tmp_path/"grown"/"config.json")["vocab_size"] == 32064
    assert load_mixtral_tokenizer(tmp_path/"grown")(TEXT).input_ids == new(TEXT).input_ids

def test_rows_need_no_model_except_for_calibration(toks, base, tmp_path):
    old, new = toks
    base.save_pretrained(tmp_path/"base")
    m = token_matrices_model(tmp_path/"base")
    assert m.model.layers[0].self_attn.q_proj.weight.is_meta and not m.lm_head.weight.is_meta
    rows, _ = init_rows(tmp_path/"base", old, new, "global_mean", 0)
    assert torch.allclose(rows[HEAD], base.lm_head.weight.mean(0).expand(len(new) - 32000, -1), atol=1e-6)
    with pytest.raises(CmixtralError, match="unknown init method 'lecun'"):
        init_rows(tmp_path/"nowhere", old, new, "lecun")

def test_calibrated_rows_through_a_loaded_model_leave_it_as_it_was(toks, base):
    old, new = toks
    calib = {"zh": [TEXT * 40], "en": [EN * 5]}
    m = copy.deepcopy(base)
    w_emb, w_head = m.model.embed_tokens.weight, m.lm_head.weight
    rows, r = init_rows(None, old, new, "mean_calibrated", 64, calib_texts=calib, block_size=32, model=m)
    assert m.model.embed_tokens.weight is w_emb and m.lm_head.weight is w_head
    assert m.config.vocab_size == 32000 and torch.equal(m.lm_head.weight, base.lm_head.weight)
    ref = copy.deepcopy(base)
    r_ref = embed_init(ref, old, new, "mean_calibrated", 64, calib_texts=calib, block_size=32)
    assert r["calibration"] == r_ref["calibration"]
    ids = new(TEXT, return_tensors="pt").input_ids
    with torch.no_grad(), rows_appended(m, rows):
        assert m.config.vocab_size == 32064 and torch.equal(m.lm_head.weight, ref.lm_head.weight)
        assert torch.equal(m(input_ids=ids).logits, ref.eval()(input_ids=ids).logits)
    assert m.lm_head.weight is w_head and m.lm_head.out_features == 32000 and m.config.vocab_size == 32000
