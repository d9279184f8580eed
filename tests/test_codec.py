"Integration tests of the codec stage: real tokenizers (Mixtral's, llama.cpp's GGUF vocabularies, Tekken) on small real text."
import shutil
from pathlib import Path
import pandas as pd
import pytest
from cmixtral.core import *
from cmixtral.assets import AssetSpec, fetch_asset, package_file
from cmixtral.checkpoint import load_mixtral_tokenizer
from cmixtral.codec import *

ROOT = Path(__file__).resolve().parent.parent
ZH = ["我的名字是小明。今天天气很好，我们去公园散步吧。", "中华人民共和国成立于一九四九年。"]
EN = ["The jury said it did find that many of Georgia's registration laws are outmoded.", "Hello world."]

@pytest.fixture(scope="module")
def models(cache) -> Path:
    "llama.cpp's vocabulary folder from the llama-cpp-python sdist (76 MB download on a cold cache)."
    return fetch_asset(CodecConfig([]).gguf, cache)

@pytest.fixture(scope="module")
def mixtral():
    return hf_codec(load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1")), "Mixtral", "Mixtral", "base")

@pytest.mark.parametrize("name", ["tiny.yaml", "micro.yaml", "mixtral-8x7b.yaml"])
def test_configs_have_a_codec_section(name):
    S = section(load_config(ROOT/"configs"/name), "codec", CodecConfig)
    assert {t.source for t in S.tokenizers} >= {"ours", "base"}
    if name == "mixtral-8x7b.yaml":
        assert {t.file for t in S.tokenizers if t.source == "hub"} == {"meta-llama/Llama-2-13b-hf", "hfl/chinese-llama-2-13b",
            "TigerResearch/tigerbot-13b-base-v3", "IDEA-CCNL/Ziya2-13B-Base", "Linly-AI/Chinese-LLaMA-2-13B-hf", "HIT-SCIR/Chinese-Mixtral-8x7B"}
        assert [(t.repo, t.path) for t in S.texts] == [("Skywork/SkyPile-150B", "data/2023-06_zh_head_0000.jsonl")]

@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_sentencepiece_gguf_rebuilt_faithfully(models, cache, name):
    "LLaMA's and Phi-3's vocabularies, rebuilt as SentencePiece models, give llama.cpp's ids on all of its test strings."
    c = gguf_codec(models, TokenizerSpec(name, "gguf", f"ggml-vocab-{name}.gguf"), cache)
    assert not c.error, c.error
    assert "47/47" in c.check
    ids = c.encode(ZH + EN)
    assert [c.decode(i) for i in ids] == ZH + EN

def test_the_plain_view_reader_reads_every_field_as_ggufs_own_reader(models):
    "LLaMA's vocabulary (string, float and integer arrays, scalars): every field's parts, offsets and types equal `gguf.GGUFReader`'s."
    import gguf, numpy as np
    path = str(models/"ggml-vocab-llama-spm.gguf")
    want, got = gguf.GGUFReader(path), plain_gguf_reader()(path)
    assert type(got.data) is np.ndarray and list(got.fields) == list(want.fields)
    for k, f in want.fields.items():
        g = got.fields[k]
        assert (g.offset, g.data, g.types, len(g.parts)) == (f.offset, f.data, f.types, len(f.parts)), k
        assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(g.parts, f.parts)), k
    with gguf_reader_swapped():
        assert gguf.GGUFReader is plain_gguf_reader()
    assert gguf.GGUFReader is type(want)

def test_unfaithful_and_broken_vocabularies_are_listed_not_dropped(models, cache, tmp_path):
    "A vocabulary whose ids disagree with llama.cpp's, or a file that does not load, becomes a row with the reason."
    name = "ggml-vocab-llama-spm.gguf"
    shutil.copy(models/name, tmp_path/name); shutil.copy(models/f"{name}.inp", tmp_path/f"{name}.inp")
    want = (models/f"{name}.out").read_text().split("\n")
    (tmp_path/f"{name}.out").write_text("\n".join(l + " 2" if i % 2 else l for i, l in enumerate(want)))   # half the expected ids changed
    c = gguf_codec(tmp_path, TokenizerSpec("LLaMA (tampered test)", "gguf", name), cache)
    assert c.error.startswith("unfaithful: only 24/47"), c.error
    (tmp_path/"ggml-vocab-broken.gguf").write_bytes((models/name).read_bytes()[:5000])
    c = gguf_codec(tmp_path, TokenizerSpec("broken", "gguf", "ggml-vocab-broken.gguf"), tmp_path)
    assert c.error.startswith("failed to load"), c.error
    t = codec_table([c], {"zh": ("zh", ZH)})
    assert list(t.status) == [c.error] and t.tokens.isna().all()

def test_roundtrip_mismatch_is_counted(models, cache):
    "Qwen2's tokenizer normalises to NFC, so a decomposed accent does not survive decode(encode(x))."
    c = gguf_codec(models, TokenizerSpec("Qwen2", "gguf", "ggml-vocab-qwen2.gguf"), cache)
    assert not c.error and "47/47" in c.check
    m, _ = measure(c, ["cafe\u0301", "café", "我的名字"])
    assert m["roundtrip_mismatch"] == 1

def test_table_compares_against_mixtral(mixtral):
    tekken = tekken_codec("tekken_240911.json", "Tekken")
    same = hf_codec(load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1")), "Mixtral again", source="ours")
    slices = {"zh-a": ("zh", ZH[:1]), "zh-b": ("zh", ZH[1:]), "en": ("en", EN)}
    t = codec_table([mixtral, same, tekken], slices)
    assert set(t.slice) == {"zh-a", "zh-b", "en", "zh (all)"}
    pooled = t[(t.slice == "zh (all)") & (t.tokenizer == "Mixtral")].iloc[0]
    assert pooled.tokens == t[(t.slice.isin(["zh-a", "zh-b"])) & (t.tokenizer == "Mixtral")].tokens.sum()
    assert (t[t.source == "ours"].fewer_than_base_pct == 0).all()
    assert (t[t.source == "ours"].ids_differ_from_base.dropna() == 0).all()
    assert (t[(t.tokenizer == "Tekken") & (t.lang == "zh")].fewer_than_base_pct > 0).all()
    assert (t.roundtrip_mismatch == 0).all()
    md = table_markdown(t)
    assert "### zh (all)" in md and "% fewer than Mixtral" in md

def test_bad_text_files_are_clear_errors(tmp_path):
    (tmp_path/"empty.jsonl").write_text("")
    (tmp_path/"gbk.txt").write_bytes("人民日报".encode("gbk"))
    with pytest.raises(CmixtralError, match=r"empty.jsonl: no text \(the file is empty\)"):
        read_text_file(tmp_path/"empty.jsonl")
    with pytest.raises(CmixtralError, match=r"gbk.txt: not valid UTF-8 text"):
        read_text_file(tmp_path/"gbk.txt")
    with pytest.raises(CmixtralError, match=r"text file .*missing.txt not found"):
        read_text_file(tmp_path/"missing.txt")


def test_a_table_stopped_after_its_first_unit_and_rerun_gives_the_uninterrupted_table(mixtral, tmp_path, monkeypatch):
    "A stop request between tokenizers, then a second attempt: the table of an uninterrupted run (timings aside)."
    ours = hf_codec(load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1")), "ours", source="ours")
    codecs = [mixtral, ours, tekken_codec("tekken_240911.json", "Tekken")]
    slices = {"zh-a": ("zh", ZH[:1]), "zh-b": ("zh", ZH[1:]), "en": ("en", EN)}
    ref = codec_table(codecs, slices, units=Units(tmp_path/"ref", "codec"))
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path/"stop"))

    class StopAfterFirst(Units):
        def finish(self, *a, **k):
            (tmp_path/"stop").touch()
            return super().finish(*a, **k)

    first = StopAfterFirst(tmp_path/"run", "codec")
    with pytest.raises(StageStopped, match="stage codec: asked to stop before measure-ours; 1 unit"):
        codec_table(codecs, slices, units=first)
    (tmp_path/"stop").unlink()
    again = Units(tmp_path/"run", "codec")
    got = codec_table(codecs, slices, units=again)
    assert (again.skipped, again.ran) == (["measure-Mixtral"], ["measure-ours", "measure-Tekken"])
    assert (got.ids_differ_from_base.dropna() == 0).all() and got.ids_differ_from_base.notna().any()
    pd.testing.assert_frame_equal(got.drop(columns="mb_per_s"), ref.drop(columns="mb_per_s"))

def test_a_grid_unit_is_measured_again_when_its_model_file_changes(micro_run, tmp_path):
    "A grid model's unit is keyed by its file's checksum too: a vocabulary rerun that writes other models to the same paths is measured anew."
    run = tmp_path/"run"
    for part in ("vocab", "assets/tokenizer"):
        shutil.copytree(micro_run[0]/part, run/part)
    shutil.copy(micro_run[0]/"assets"/"manifest.json", run/"assets"/"manifest.json")
    shutil.copy(micro_run[0]/"run.json", run/"run.json")
    docs = ZH * 20
    first = grid_tokens_per_char(run, docs, "merged", Units(tmp_path/"units", "codec"))
    a, b = first.model.iloc[0], first.model.iloc[-1]
    assert first.tokens_per_char.iloc[0] != first.tokens_per_char.iloc[-1]
    tmp = run/"swap.model"                                       # the two models' files change places
    shutil.move(run/a, tmp); shutil.move(run/b, run/a); shutil.move(tmp, run/b)
    U = Units(tmp_path/"units", "codec")
    again = grid_tokens_per_char(run, docs, "merged", U)
    assert len(U.ran) == 2 and len(U.skipped) == len(first) - 2, (U.ran, U.skipped)
    assert again.tokens_per_char.iloc[0] == first.tokens_per_char.iloc[-1]
    assert again.tokens_per_char.iloc[-1] == first.tokens_per_char.iloc[0]
