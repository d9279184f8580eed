"""The training machinery shared by pretraining and SFT, on a small real Mixtral: the step's clock, stale saves, links
across file systems, and SFT's CPU step on a ShareGPT dump with bad records."""
import json, logging, os, tempfile
from pathlib import Path
import pytest, yaml
from cmixtral.core import CmixtralError, read_json, write_json
from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file
from cmixtral.checkpoint import EMBED, HEAD, grow_model, link_or_copy, load_mixtral_tokenizer
from cmixtral.training import LoraSettings, TrainSettings, load_qlora_model, train_model

ROOT = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")


class _Lines(logging.Handler):
    "The project logger's lines, collected (it does not propagate to pytest's caplog)."
    def __init__(self):
        super().__init__(); self.lines = []
    def emit(self, r): self.lines.append(r.getMessage())


@pytest.fixture
def log_lines():
    h, lg = _Lines(), logging.getLogger("cmixtral")
    lg.addHandler(h); lg.setLevel(logging.INFO)
    yield h.lines
    lg.removeHandler(h)


@pytest.fixture(scope="module")
def small(tmp_path_factory, tok):
    "A small Mixtral with Mixtral's tokenizer, saved to disk."
    d = tmp_path_factory.mktemp("small")/"model"
    build_tiny_mixtral(BaseModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                                     max_position_embeddings=128)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_training_removes_stale_saves_and_keeps_the_clock_of_a_step(small, tok, tmp_path, log_lines):
    "A tmp-checkpoint-N that a killed save left is removed (logged, recorded); timeout and save interval come from the step."
    from datasets import Dataset
    out = tmp_path/"trainer"
    (out/"tmp-checkpoint-7"/"checkpoint-7").mkdir(parents=True)
    (out/"tmp-checkpoint-7"/"checkpoint-7"/"adapter_model.safetensors").write_bytes(b"half")
    T = TrainSettings(lr=1e-3, batch_size=2, max_steps=2, logging_steps=1, report_to="none", gradient_checkpointing=False,
                      save_steps=0, ddp_timeout=0, step_seconds=30, max_lost_minutes=1)
    ds = Dataset.from_dict({"input_ids": [[1, 5, 6, 7, 8, 9, 10, 2]] * 4})
    train_model(load_qlora_model(small, LoraSettings(r=2, alpha=4, dropout=0.0)), tok, ds, None, out, T)
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]      # saved every 2 steps
    info = read_json(out/"run_info.json")
    assert info["attempts"][0]["stale_saves_removed"] == ["tmp-checkpoint-7"]
    assert {k: info["clock"][k] for k in ("ddp_timeout", "save_steps", "lost_minutes")} == {"ddp_timeout": 900, "save_steps": 2,
                                                                                            "lost_minutes": 1.0}
    import torch
    args = torch.load(out/"checkpoint-2"/"training_args.bin", weights_only=False)   # what the Trainer was given
    assert (args.ddp_timeout, args.save_steps) == (900, 2)
    assert any("tmp-checkpoint-7: an incomplete checkpoint" in l for l in log_lines)
    assert any(l.startswith("collective timeout 900 s (max(900 s, 10 x step_seconds)), checkpoint every 2 steps") for l in log_lines)


def _other_fs() -> Path:
    if not (SHM.is_dir() and os.stat(SHM).st_dev != os.stat(tempfile.gettempdir()).st_dev):
        pytest.skip("no second file system (tmpfs /dev/shm) on this machine")
    return Path(tempfile.mkdtemp(dir=SHM))


def test_a_model_copied_across_file_systems_is_an_error_unless_allowed(tmp_path):
    "grow_model's shards are hard-linked; on another file system a copy fails naming both paths and the key, or is allowed."
    import shutil, torch
    other = _other_fs()
    try:
        base = other/"base"
        build_tiny_mixtral(BaseModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1),
                           vocab_size=512).save_pretrained(base, max_shard_size="100KB")
        rows = {EMBED: torch.zeros(2, 32), HEAD: torch.zeros(2, 32)}
        with pytest.raises(CmixtralError) as e:
            grow_model(base, tmp_path/"grown", rows, key="pretrain.train.allow_copy")
        msg = str(e.value)
        assert "cannot hard-link" in msg and str(base.resolve()) in msg and str(tmp_path) in msg
        assert msg.endswith("set pretrain.train.allow_copy: true to copy") and "\n" not in msg
        assert not (tmp_path/"grown").exists()
        grow_model(base, tmp_path/"grown", rows, allow_copy=True, key="pretrain.train.allow_copy")
        assert read_json(tmp_path/"grown"/"config.json")["vocab_size"] == 514
        f = next(f for f in base.glob("*.safetensors"))
        assert link_or_copy(f, tmp_path/"x.safetensors", allow_copy=True) == "copied"
        assert link_or_copy(tmp_path/"x.safetensors", tmp_path/"y.safetensors") == "linked"        # same file system
    finally:
        shutil.rmtree(other)


def _sft_run(tmp_path, small, dump, max_bad_share):
    "A run directory whose SFT starts from embed_init's model (`small`), on the ShareGPT dump folder `dump`."
    run = tmp_path/"run"
    (run/"embed_init").mkdir(parents=True)
    os.symlink(small, run/"embed_init"/"model")
    write_json(run/"embed_init"/"manifest.json", {"stage": "embed_init"})
    cfg = yaml.safe_load((ROOT/"configs"/"micro.yaml").read_text())
    cfg["sft"]["datasets"] = [{"name": "ShareGPT-Chinese", "source": "path", "path": str(dump), "files": ["*.jsonl"], "lang": "zh"}]
    cfg["sft"]["mixture"] = ["1.0:ShareGPT-Chinese"]
    cfg["sft"]["max_bad_share"] = max_bad_share
    (tmp_path/"c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return tmp_path/"c.yaml", run


def _dump(folder: Path) -> Path:
    "ShareGPT files: 40 good conversations, a line cut short, an empty turn, a conversation without an answer."
    folder.mkdir()
    good = [{"conversations": [{"from": "human", "value": f"第{i}个问题是什么?"}, {"from": "gpt", "value": f"答案是{i}。"}]}
            for i in range(40)]
    bad = ['{"conversations": [{"from": "human", "value": "断', json.dumps({"conversations": [{"from": "human", "value": ""},
           {"from": "gpt", "value": "x"}]}), json.dumps({"conversations": [{"from": "human", "value": "在吗?"}]}, ensure_ascii=False)]
    lines = [json.dumps(r, ensure_ascii=False) for r in good[:20]] + bad + [json.dumps(r, ensure_ascii=False) for r in good[20:]]
    (folder/"part-0.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_sft_prepare_counts_bad_records_encodes_once_and_fails_with_one_line(small, tmp_path, log_lines, capsys):
    "`python -m cmixtral.sft --prepare`: bad ShareGPT records counted by kind (one log line each); too many: exit 2, one line."
    from cmixtral.sft import main, prepare
    dump = _dump(tmp_path/"dump")
    cfg, run = _sft_run(tmp_path, small, dump, 0.1)
    rec = prepare(cfg, run)
    assert rec["which"] == "embed_init" and rec["skipped"] == {"ShareGPT-Chinese": {
        "malformed json": 1, "unknown role or empty message": 1, "no assistant turn": 1}}
    assert {(r["split"], r["records"]) for r in rec["data"]} == {("train", 36), ("dev", 4)}
    assert read_json(run/"sft"/"prepared.json") == json.loads(json.dumps(rec))
    kinds = [l for l in log_lines if "SFT dataset 'ShareGPT-Chinese': skipped" in l]
    assert len(kinds) == 3 and any("no assistant turn (first: " in l and "part-0.jsonl: record" in l for l in kinds)
    assert prepare(cfg, run)["data"] == rec["data"] and any("SFT data encoded earlier" in l for l in log_lines)   # once
    (tmp_path/"strict").mkdir()
    cfg2, run2 = _sft_run(tmp_path/"strict", small, dump, 0.05)
    capsys.readouterr()
    assert main(["--prepare", "--config", str(cfg2), "--out", str(run2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("cmixtral: error: SFT dataset 'ShareGPT-Chinese': 40 good of 43 records (1 malformed json, 1 no assistant "
                   "turn, 1 unknown role or empty message); more than sft.max_bad_share = 0.05 of them are bad, or none is good")
