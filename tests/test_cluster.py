"SLURM scripts and the GPU memory plan: real configs, real bash, the real CLI."
import re, subprocess, sys
from pathlib import Path
import pytest
from cmixtral.cli import main

ROOT = Path(__file__).resolve().parent.parent

def sbatch(tmp_path, config, stage, *extra):
    out = tmp_path/f"{stage}.sbatch"
    assert main(["sbatch", "--config", str(ROOT/config), "--stage", stage, "--out", str(tmp_path/"run"), "--script", str(out), *extra]) == 0
    return out, out.read_text()

def test_full_scale_pretrain_script_is_torchrun_on_4x8_gpus(tmp_path):
    out, txt = sbatch(tmp_path, "configs/mixtral-8x7b.yaml", "pretrain")
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    lines = txt.splitlines()
    for d in ["--nodes=4", "--gpus-per-node=8", "--partition=gpu", "--requeue", "--signal=B:USR1@600", "--time=72:00:00",
              f"--output={tmp_path/'run'}/slurm/%x-%j.out"]:
        assert f"#SBATCH {d}" in lines, d
    launch = next(l for l in lines if "torch.distributed.run" in l)
    assert launch.startswith("step env OMP_NUM_THREADS=4 srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task=32 "
                             f"{sys.executable} -m torch.distributed.run")
    assert "--nnodes=4 --nproc-per-node=8" in launch and "-m cmixtral.pretrain" in launch
    assert "--rdzv-endpoint=$MASTER_ADDR:$CMIXTRAL_PORT" in launch
    assert "export CMIXTRAL_PORT=$((15000 + SLURM_JOB_ID % 15000))" in lines       # port: 0, from the job id
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in lines and "export NCCL_DEBUG=WARN" in lines
    assert f"--config {ROOT/'configs/mixtral-8x7b.yaml'} --out {tmp_path/'run'}" in launch
    check = f"{sys.executable} -m cmixtral.cli preflight --node --config {ROOT/'configs/mixtral-8x7b.yaml'}"
    assert lines.index(check) < lines.index(next(l for l in lines if l.startswith("step ")))   # CUDA first
    assert "source ~/venvs/cmixtral/bin/activate" in lines and "trap stop USR1" in lines and "#SBATCH --open-mode=append" in lines
    assert "-m cmixtral.cli pipeline" not in txt                 # the 32-GPU job only trains: the notebook is pretrain-release's
    assert (tmp_path/"run"/"slurm").is_dir()               # SLURM opens --output before the script runs

def test_full_scale_release_and_cpu_stages_book_what_they_use(tmp_path):
    "pretrain-release: the notebook on one node of 8 GPUs; vocab: the CPU partition, its own CPUs and memory, no GPU."
    _, txt = sbatch(tmp_path, "configs/mixtral-8x7b.yaml", "pretrain-release")
    d = directives(txt)
    assert (d["--nodes"], d.get("--gpus-per-node"), d["--partition"], d["--job-name"]) == ("1", "8", "gpu", "cmixtral-pretrain-release")
    assert f"--stages pretrain || status=$?" in txt and "torch.distributed.run" not in txt
    for stage, cpus, mem in (("vocab", "128", "0"), ("data", "64", "256G"), ("codec", "16", "64G")):
        _, txt = sbatch(tmp_path, "configs/mixtral-8x7b.yaml", stage)
        d = directives(txt)
        assert (d["--partition"], d["--cpus-per-task"], d["--mem"]) == ("cpu", cpus, mem), stage
        assert "--gpus-per-node" not in d and "preflight --node" not in txt, stage

def test_preflight_refuses_gpus_for_host_work_and_prints_gpu_hours(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["preflight", "--config", str(ROOT/"configs/mixtral-8x7b.yaml"), "--out", str(tmp_path/"run")]) == 1   # /data/...
    out = capsys.readouterr().out.splitlines()
    job = {l.split()[1]: l for l in out if l.startswith("job ")}
    assert job["pretrain"].endswith("ok      gpu partition, 4 node(s) x 8 GPU(s), 32 CPUs, 0, 72:00:00, torchrun, 2,304 GPU-h")
    assert job["vocab"].split("ok")[1].strip().startswith("cpu partition, 1 node(s) x 0 GPU(s)") and job["vocab"].endswith(" 0 GPU-h")
    total = next(l for l in out if l.startswith("gpu-hours"))
    assert re.search(r"the chain books [\d,]+ GPU-hours at its time limits$", total), total
    hub = next(l for l in out if l.startswith("hub "))
    assert "not checked: offline (HF_HUB_OFFLINE=1)" in hub
    from cmixtral.cluster import check_stage_jobs    # a CPU stage that books GPUs (the whole table: nbs/80_cluster)
    from cmixtral.core import load_config
    rows = check_stage_jobs(load_config(ROOT/"configs/mixtral-8x7b.yaml", ["cluster.stages.sft.prepare.gpus_per_node=8"]))
    assert [r["detail"] for r in rows if not r["ok"]] == \
        ["job sft-prepare books 8 GPU(s) per node for work that uses none: set cluster.stages.sft.prepare.gpus_per_node: 0"]

def test_a_gpu_node_check_fails_in_one_line_without_cuda(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["preflight", "--node", "--config", str(ROOT/"configs/mixtral-8x7b.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cmixtral: error: node ") and "cannot run the GPU stages: torch " in err
    assert "bitsandbytes native library: CPU" in err and "flash_attn" in err
    assert main(["preflight", "--node", "--config", str(ROOT/"configs/rehearsal.yaml")]) == 0   # cluster.gpu: false
    assert "skipped: cluster.gpu is false" in capsys.readouterr().out

def test_tiny_data_script_runs_the_notebook_with_overrides(tmp_path):
    out, txt = sbatch(tmp_path, "configs/tiny.yaml", "data", "-p", "data.num_proc=2")
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    assert "#SBATCH --gpus-per-node" not in txt            # a CPU job
    assert (f"step {sys.executable} -m cmixtral.cli pipeline --config {ROOT/'configs/tiny.yaml'} --out {tmp_path/'run'} "
            "-p data.num_proc=2 --stages data || status=$?") in txt.splitlines()
    assert "torch.distributed.run" not in txt

def test_torchrun_needs_a_main(tmp_path, capsys):
    assert main(["sbatch", "--config", str(ROOT/"configs/mixtral-8x7b.yaml"), "--stage", "vocab", "--script", str(tmp_path/"x"),
                 "-p", "cluster.stages.vocab.launcher=torchrun"]) == 2
    assert "has no main() for torchrun" in capsys.readouterr().err
    assert not (tmp_path/"x").exists()

def test_unknown_stage(tmp_path, capsys):
    assert main(["sbatch", "--config", str(ROOT/"configs/tiny.yaml"), "--stage", "nope", "--script", str(tmp_path/"x")]) == 2
    assert capsys.readouterr().err.startswith("cmixtral: error: unknown stage 'nope'")

def test_memory_full_scale(capsys):
    assert main(["memory", "--config", str(ROOT/"configs/mixtral-8x7b.yaml")]) == 0
    out = capsys.readouterr().out
    assert "46.9B parameters, vocabulary 57,000, LoRA r=64, batch 16 x 2048 tokens" in out and "ZeRO-2 over 32 GPU(s)" in out
    gb = lambda label: float(re.search(r"([\d.]+) GB", next(l for l in out.splitlines() if label in l))[1])
    # counted by hand from Mixtral-8x7B's shapes (hidden 4096, experts 14336, 32 layers, 8 experts, 8 KV heads of 128)
    h, f, layers, kv, r, vocab = 4096, 14336, 32, 1024, 64, 57024        # 57,000 rows padded to a multiple of 64
    linear = layers * (2 * h * h + 2 * h * kv + 8 * 3 * h * f)            # the 4-bit weights: attention and experts
    lora = layers * r * (2 * (h + h) + 2 * (h + kv) + 8 * 3 * (h + f))    # A and B of every targeted Linear
    assert abs(gb("NF4 codes") - linear / 2 / 1e9) < 0.01                  # half a byte per weight
    assert gb("NF4 codes") > 23                                            # Hugging Face: 4-bit inference "> 23 GB"
    assert abs(gb("LoRA A/B (bf16)") - 2 * lora / 1e9) < 0.01             # DeepSpeed casts parameters to bf16
    assert abs(gb("trainable copies (bf16)") - 2 * 2 * vocab * h / 1e9) < 0.01
    micro = 16                                                             # the full config's micro-batch
    assert abs(gb("fp32 copy of the logits") - 4 * vocab * 2048 * micro / 1e9) < 0.01   # the loss's logits.float()
    counted = linear / 2 + 2 * lora + 2 * (2 * 2 * vocab * h)              # codes, LoRA, both copies of both matrices
    total = gb("peak per GPU")
    # the rest (quant state, optimizer, activations, logits, NCCL, CUDA context) is what training adds, the fp32
    # logits among it, and the whole stays under the margin
    assert counted / 1e9 + gb("fp32 copy of the logits") < total < 0.85 * 80
    assert "safety margin: MARGIN = 0.85" in out
    # a what-if: the 32k context the seed's users asked about, without gradient checkpointing, does not fit
    assert main(["memory", "--config", str(ROOT/"configs/mixtral-8x7b.yaml"), "-p", "memory.block_size=32768",
                 "-p", "memory.gradient_checkpointing=false"]) == 0
    assert "does NOT fit under 85% of 80 GB" in capsys.readouterr().out

def test_memory_every_stage(capsys):
    "One table per full-scale stage that holds the model; eval in NF4 moves to one GPU."
    assert main(["memory", "--config", str(ROOT/"configs/mixtral-8x7b.yaml")]) == 0
    out = capsys.readouterr().out
    for head in ("assets: base bits per character, bf16 over 8 GPU(s)", "embed_init: base in bf16 over 8 GPU(s), 57,024 rows",
                 "sft: QLoRA per rank", "sft merge: adapter merged into the base on the host", "eval: lm-eval, bf16 over 8 GPU(s), batch 8 x 4096"):
        assert head in out, head
    assert "total host RAM" in out
    assert main(["memory", "--config", str(ROOT/"configs/mixtral-8x7b.yaml"), "-p", "eval.load_in_4bit=true"]) == 0
    out = capsys.readouterr().out
    assert "eval: lm-eval, NF4 on one GPU, batch 8 x 4096" in out and "weights, NF4 body on one GPU" in out

def test_memory_setups_and_choice(capsys):
    "ZeRO-1 keeps whole bf16 + fp32 gradients on every rank (BF16_Optimizer): micro-batch 16 fits only under ZeRO-2."
    assert main(["memory", "--config", str(ROOT/"configs/mixtral-8x7b.yaml")]) == 0
    out = capsys.readouterr().out
    rows = {(int(m[1]), m[2], int(m[3])): (float(m[4]), m[5]) for m in
            re.finditer(r"^ +([12]) (adamw|paged_adamw_8bit) +(\d+) +\d+ +\d+ +([\d.]+) +(yes|no)", out, re.M)}
    assert len(rows) == 20
    gap = rows[(1, "adamw", 1)][0] - rows[(2, "adamw", 1)][0]
    assert 8.5 < gap < 10.5                        # 6 bytes per trainable parameter (1.43B) less ZeRO-2's partitions
    assert all((gb <= 68.0) == (ok == "yes") for gb, ok in rows.values())   # 85% of 80 GB
    assert "chosen: ZeRO-2, adamw, micro-batch 16 x accumulation 1" in out

def test_memory_host_plan():
    "Host RAM per node: the ranks loading and saving, the SFT merges from checkpoint.merge_peak_bytes."
    from cmixtral.core import load_config
    from cmixtral.memory import host_plan, MemoryConfig, PROCESS_GB
    cfg = load_config(ROOT/"configs/mixtral-8x7b.yaml")
    rows = host_plan(cfg, MemoryConfig(zero_stage=2, world_size=32, optimizer="adamw"))
    assert {r["stage"] for r in rows} == {"pretrain", "sft"} and all(r["host_gb"] > 0 for r in rows)
    load = next(r for r in rows if "loading" in r["what"])
    assert load["what"].startswith("8 rank(s)") and 8 * PROCESS_GB < load["host_gb"] < 8 * PROCESS_GB + 8
    # a checkpoint save: 8 ranks' fp32 master + AdamW m and v (12 bytes / 32 GPUs), rank 0's adapter in bf16 twice
    lora = 32 * 64 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 8 * 3 * (4096 + 14336))
    trainable = lora + 2 * 57024 * 4096
    save = next(r for r in rows if "checkpoint save" in r["what"])
    assert abs(save["host_gb"] - (8 * PROCESS_GB + (8 * trainable * 12 / 32 + 2 * 2 * trainable) / 1e9)) < 0.01
    merge = next(r for r in rows if "merges" in r["what"])
    assert 12 < merge["host_gb"] - PROCESS_GB < 13.5      # shard 5 GB + adapter 5.7 GB (fp32) + largest tensor 1.9 GB
    cfg["cluster"]["stages"].setdefault("sft", {})["release"] = {"gpus_per_node": 0}
    held = [r for r in host_plan(cfg) if "held-out" in r["what"]]
    assert len(held) == 1 and held[0]["host_gb"] > 90    # a bf16 Mixtral-8x7B in host memory

def test_memory_bad_optimizer(capsys):
    assert main(["memory", "--config", str(ROOT/"configs/mixtral-8x7b.yaml"), "-p", "memory.optimizer=sgd"]) == 2
    assert "memory.optimizer must be adamw or paged_adamw_8bit" in capsys.readouterr().err


def directives(txt): return {l.split("=")[0][len("#SBATCH "):]: l.split("=", 1)[1] for l in txt.splitlines() if l.startswith("#SBATCH --") and "=" in l}

def test_each_stage_script_books_its_own_resources(tmp_path):
    "configs/micro.yaml: cluster.stages sets assets' memory and time, data's CPUs; the rest is cluster.slurm's."
    got = {s: directives(sbatch(tmp_path, "configs/micro.yaml", s)[1]) for s in ("assets", "vocab", "data", "sft")}
    want = {"assets": ("2", "4G", "00:05:00"), "vocab": ("2", "8G", "00:10:00"), "data": ("1", "4G", "00:10:00"),
            "sft": ("2", "8G", "00:10:00")}
    for stage, (cpus, mem, time) in want.items():
        d = got[stage]
        assert (d["--cpus-per-task"], d["--mem"], d["--time"]) == (cpus, mem, time), (stage, d)
        assert d["--job-name"] == f"cmixtral-micro-{stage}"

def test_threads_must_fit_the_cpus_a_stage_books(tmp_path, capsys):
    assert main(["sbatch", "--config", str(ROOT/"configs/micro.yaml"), "--stage", "vocab", "--script", str(tmp_path/"x"),
                 "-p", "vocab.workers=4"]) == 2
    err = capsys.readouterr().err
    assert "vocab.num_threads x vocab.workers = 4 threads do not fit the 2 CPUs (cpus_per_task) the 'vocab' job books" in err
    assert err.count("\n") == 1 and not (tmp_path/"x").exists()
    assert main(["sbatch", "--config", str(ROOT/"configs/micro.yaml"), "--stage", "data", "--script", str(tmp_path/"x"),
                 "-p", "data.num_proc=2"]) == 2
    assert "data.num_proc = 2 threads do not fit the 1 CPUs" in capsys.readouterr().err

def test_a_papermill_stage_runs_on_one_node(tmp_path, capsys):
    assert main(["sbatch", "--config", str(ROOT/"configs/mixtral-8x7b.yaml"), "--stage", "vocab", "--script", str(tmp_path/"x"),
                 "-p", "cluster.stages.vocab.nodes=4"]) == 2
    assert "stage 'vocab' runs with launcher papermill (one process on one node) but asks for nodes: 4" in capsys.readouterr().err

def test_submit_without_sbatch_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["submit", "--config", str(ROOT/"configs/micro.yaml"), "--out", str(tmp_path/"run"), "--stages", "assets"]) == 2
    assert capsys.readouterr().err == "cmixtral: error: sbatch not found on PATH: run this on a SLURM login node (or load SLURM's module)\n"

def test_preflight_of_micro_passes(tmp_path, capsys):
    assert main(["preflight", "--config", str(ROOT/"configs/micro.yaml"), "--out", str(tmp_path/"run")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "every check passed" and "FAILED" not in out

def test_preflight_names_a_missing_corpus_and_a_broken_deepspeed_json(tmp_path, capsys):
    bad = tmp_path/"ds.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    assert main(["preflight", "--config", str(ROOT/"configs/micro.yaml"), "--out", str(tmp_path/"run"),
                 "-p", "assets.corpora.1.source=path", "-p", "assets.corpora.1.file=/nonexistent/pos.txt",
                 "-p", f"pretrain.train.deepspeed={bad}"]) == 1
    failed = [l for l in capsys.readouterr().out.splitlines() if " FAILED " in l]
    assert len(failed) == 2, failed
    assert "assets.corpora.1.file: /nonexistent/pos.txt not found" in failed[0]
    assert f"pretrain.train.deepspeed: {bad} is not valid JSON" in failed[1]

def test_preflight_names_the_hub_repos_that_refuse_the_token(monkeypatch):
    "A local stand-in for the hub (HF_ENDPOINT): Mixtral's repo is gated, Llama-2's unknown, the rest answer."
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from cmixtral.cluster import check_hub
    from cmixtral.core import load_config
    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            code, error = ((403, "GatedRepo") if "Mixtral-8x7B-v0.1" in self.path else
                           (401, "RepoNotFound") if "Llama-2" in self.path else (200, ""))
            self.send_response(code)
            if error:
                self.send_header("X-Error-Code", error)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        rows = check_hub(load_config(ROOT/"configs/mixtral-8x7b.yaml"))
    finally:
        server.shutdown()
    failed = [r["detail"] for r in rows if not r["ok"]]
    assert failed == [
        "assets.tokenizer: model mistralai/Mixtral-8x7B-v0.1: gated: your token is not granted access "
        "(accept the terms on the repo's hub page)",
        "codec.tokenizers.2: model meta-llama/Llama-2-13b-hf: not found, or your token may not read it "
        "(HF_TOKEN, or huggingface-cli login)"], failed
    assert len(rows) == len(asked) and "/api/datasets/Skywork/SkyPile-150B/auth-check" in asked
    assert all(r["ok"] for r in rows if "Skywork" in r["detail"])

def _hub_stand_in(trees):
    """A local stand-in for the hub's file listing: GET /api/datasets/{repo}/tree/main?recursive=True serves
    `trees[repo]` ({path: size}) in pages of 3 entries linked by a `Link: <...>; rel="next"` header, as the hub pages
    its listings. Returns (server, the paths asked)."""
    import json, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse
    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            url = urlparse(self.path)
            repo = url.path.removeprefix("/api/datasets/").removesuffix("/tree/main")
            q = parse_qs(url.query)
            if repo not in trees or q.get("recursive") != ["True"]:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.end_headers()
                return
            start = int(q.get("cursor", ["0"])[0])
            files = sorted(trees[repo].items())
            page = [{"type": "file", "path": p, "size": s, "oid": "0" * 40} for p, s in files[start:start + 3]]
            page += [{"type": "directory", "path": "data", "oid": "0" * 40}] if start == 0 else []
            body = json.dumps(page).encode()
            self.send_response(200)
            if start + 3 < len(files):
                nxt = f"http://127.0.0.1:{self.server.server_port}{url.path}?recursive=True&expand=False&cursor={start + 3}"
                self.send_header("Link", f'<{nxt}>; rel="next"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, asked

SKYPILE = {"README.md": 10, "data/2022-01_zh_head_0000.jsonl": 1000, "data/2022-01_zh_middle_0001.jsonl": 2000,
           "data/2023-06_zh_head_0000.jsonl": 50000, "data/2023-07_zh_head_0000.jsonl": 4000,
           "data/2023-08_zh_middle_0000.jsonl": 8000}
SLIMPAJAMA = {"data/train-00000-of-00002.parquet": 3000, "data/train-00001-of-00002.parquet": 5000,
              "data/test-00000-of-00001.parquet": 700, "README.md": 20}

def _hub_inputs(hf_home, configs, **env):
    """`hub_inputs` of each (config, overrides) in a fresh process under `offline_env(hf_home, **env)`, as JSON:
    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when it is imported."""
    import json
    from hub_cache import run_offline
    code = ("import json\nfrom cmixtral.cluster import hub_inputs\nfrom cmixtral.core import load_config\n"
            f"print(json.dumps([hub_inputs(load_config(c, o)) for c, o in {configs!r}]))")
    r = run_offline(hf_home, code, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])

def test_disk_plan_counts_the_hub_files_the_data_stage_reads(tmp_path, monkeypatch):
    """The full config against a stand-in hub: each dataset counts exactly the sizes of the files it reads (the held-out
    2023-06 file excluded, README and SlimPajama's test file unmatched), listed over pages; a file already in the cache
    needs no room there; the token blocks are a token per 4 bytes at 2 bytes a token (57,000 pieces). The hub is
    asked in a fresh process; the plan takes its rows."""
    from cmixtral import cluster
    from cmixtral.cluster import check_disk, disk_plan
    from cmixtral.core import load_config
    from hub_cache import cache_repo
    server, asked = _hub_stand_in({"Skywork/SkyPile-150B": SKYPILE, "DKYoon/SlimPajama-6B": SLIMPAJAMA})
    cache_repo(tmp_path/"hf", "Skywork/SkyPile-150B", {"data/2022-01_zh_head_0000.jsonl": b"x" * 1000}, "dataset")
    full = str(ROOT/"configs/mixtral-8x7b.yaml")
    try:
        hub, both = _hub_inputs(tmp_path/"hf", [(full, []), (full, ['data.datasets.1.files=["data/*.jsonl"]'])],
                                HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
    finally:                                                        # the second: 2023 reads 2022's files too
        server.shutdown()
    monkeypatch.setattr(cluster, "hub_inputs", lambda cfg: hub)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path/"hf"))            # where check_disk finds the cache
    plan = disk_plan(load_config(full))
    rows = check_disk(load_config(full), tmp_path/"run")
    got = [(h["name"], h["bytes"], h["cached"], h["from"]) for h in plan["hub"]]
    assert got == [("SkyPile-150B-2022", 3000, 1000, "hub metadata"), ("SkyPile-150B-2023", 12000, 0, "hub metadata"),
                   ("DKYoon-SlimPajama-6B", 8000, 0, "hub metadata")], got
    assert plan["not_counted"] == []
    assert plan["items"]["token blocks (5,750 tokens x 2 bytes)"] == 23000 // 4 * 2
    assert [(h["name"], h["bytes"]) for h in both][:2] == [("SkyPile-150B-2022", 3000), ("SkyPile-150B-2023", 12000)]
    assert sum(1 for a in asked if "SkyPile" in a) == 2 * 2          # two pages, once per config (two datasets read it)
    assert [r["check"] for r in rows] == ["disk"]                   # the cache and the run directory share tmp's filesystem
    assert ("the hub inputs, 0.0 GB (SkyPile-150B-2022 0.0 GB from hub metadata, SkyPile-150B-2023 0.0 GB from hub "
            "metadata, DKYoon-SlimPajama-6B 0.0 GB from hub metadata)") in rows[0]["detail"], rows[0]

def test_disk_plan_offline_reads_the_cache_then_size_gb_then_names_what_it_cannot_count(tmp_path, monkeypatch):
    """Offline: SkyPile 2022 from the files in the cache, SlimPajama from its stated `size_gb`, SkyPile 2023 (nothing of
    it cached, no size stated) named with the key to state; the same from a hub that does not answer. A cache on
    another filesystem than the run directory gets a row of its own. Offline and the cache are read from the
    environment now; the hub that does not answer is asked from a fresh process (huggingface_hub's endpoint)."""
    import os, tempfile
    from cmixtral.cluster import check_disk, disk_plan
    from cmixtral.core import load_config
    from hub_cache import cache_repo
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as hf:
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.setenv("HF_HOME", hf)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        cache_repo(hf, "Skywork/SkyPile-150B", {"data/2022-01_zh_head_0000.jsonl": b"x" * 1000,
                                                "data/2022-02_zh_head_0000.jsonl": b"y" * 500}, "dataset")
        full, size = str(ROOT/"configs/mixtral-8x7b.yaml"), ["data.datasets.2.size_gb=14.5"]
        cfg = load_config(full, size)
        plan = disk_plan(cfg)
        rows = check_disk(cfg, tmp_path/"run")
        [unreachable] = _hub_inputs(hf, [(full, size)], HF_HUB_OFFLINE="0",
                                    HF_ENDPOINT="http://127.0.0.1:9")   # the discard port: nothing answers
        separate = os.stat(hf).st_dev != os.stat(tmp_path).st_dev
    got = [(h["name"], h["bytes"], h["cached"], h["from"]) for h in plan["hub"]]
    assert got == [("SkyPile-150B-2022", 1500, 1500, "cache"), ("DKYoon-SlimPajama-6B", 14_500_000_000, 0, "config")], got
    assert [(h["name"], h["why"]) for h in plan["not_counted"]] == \
        [("SkyPile-150B-2023", "offline, not in the Hugging Face cache: state data.datasets.1.size_gb")]
    assert [h for h in unreachable if h["from"]] == plan["hub"]
    assert [h for h in unreachable if not h["from"]][0]["why"] == \
        "the hub did not list it (ConnectionError), not in the Hugging Face cache: state data.datasets.1.size_gb"
    detail = rows[-1]["detail"]
    assert detail.startswith("about 14.5 GB needed: the hub inputs, 14.5 GB (SkyPile-150B-2022 0.0 GB from cache, "
                             "DKYoon-SlimPajama-6B 14.5 GB from config)" if separate else "about "), detail
    assert "not counted: SkyPile-150B-2023 (offline, not in the Hugging Face cache: state data.datasets.1.size_gb)" in detail
    assert [r["check"] for r in rows] == (["disk", "disk hub-cache"] if separate else ["disk"])


def test_the_configs_env_is_exported_by_every_job_and_the_clusters_own_wins(tmp_path):
    "A config's `env` reaches a stage's job and a prepare job (rehearsal: torchrun); cluster.slurm.env overrides it."
    import yaml
    for config, stage in (("configs/micro.yaml", "vocab"), ("configs/rehearsal.yaml", "pretrain-prepare")):
        d = yaml.safe_load((ROOT/config).read_text())
        d["env"] = {**(d.get("env") or {}), "CMIXTRAL_ENV_PROBE": "1", "NCCL_DEBUG": "INFO"}
        d["cluster"]["slurm"]["env"] = {**d["cluster"]["slurm"].get("env", {}), "NCCL_DEBUG": "WARN"}
        cfg = tmp_path/f"{stage}.yaml"
        cfg.write_text(yaml.safe_dump(d))
        _, txt = sbatch(tmp_path, cfg, stage)
        lines = txt.splitlines()
        assert "export CMIXTRAL_ENV_PROBE=1" in lines, stage
        assert "export NCCL_DEBUG=WARN" in lines and "export NCCL_DEBUG=INFO" not in lines, stage
