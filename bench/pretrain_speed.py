"""Training-step speed and memory of the pretrain stage's model: QLoRA against LoRA and full fine-tuning, side by side.

    python bench/pretrain_speed.py [--model runs/tiny/embed_init/model] [--batch 4] [--block 256] [--steps 3] [--rounds 2]

For each setup, in its own process (so that peak RSS is that setup's alone), on the same model, data and cores:
  qlora        4-bit NF4 body with double quantisation, LoRA on q,k,v,o,w1,w2,w3, embed_tokens + lm_head trained, gradient checkpointing
  qlora-nogc   the same without gradient checkpointing
  lora-fp32    the body in float32 (not quantised), the same LoRA and trainable embeddings, gradient checkpointing
  lora-bf16    the body in bfloat16, otherwise as lora-fp32
  full-fp32    every parameter trained (no LoRA), float32, no gradient checkpointing
it times `--steps` optimizer steps (AdamW, batch x block tokens of real training blocks) after one warm-up step,
interleaved over `--rounds` rounds, and prints the median tokens/s, peak RSS and the ratios
(QLoRA vs fp32 LoRA, gradient checkpointing on vs off, QLoRA vs full fine-tuning). A benchmark, not a test.
Writes bench/out/pretrain_speed.csv.
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

SETUPS = ["qlora", "qlora-nogc", "lora-fp32", "lora-bf16", "full-fp32"]

def one(setup, model_dir, batch, block, steps, seed=0):
    "Time `steps` training steps of one setup in this process; return tokens/s and peak RSS."
    import torch
    from cmixtral.assets import load_mixtral_tokenizer, load_texts
    from cmixtral.checkpoint import QuantSettings, load_model
    from cmixtral.pretrain import PretrainConfig, load_qlora_model
    torch.manual_seed(seed)
    tok = load_mixtral_tokenizer(Path(model_dir)/"tokenizer.model")
    run_dir = Path(model_dir).parent.parent
    from cmixtral.assets import pack_documents
    texts = load_texts(run_dir, "zh", "train", 200_000) + load_texts(run_dir, "en", "train", 100_000)
    blocks = pack_documents(texts, tok, block)
    S = PretrainConfig()
    if setup.startswith("qlora"):
        model = load_qlora_model(model_dir, S, gradient_checkpointing=setup == "qlora")
    elif setup.startswith("lora"):
        S.quant = QuantSettings(load_in_4bit=False, compute_dtype="bfloat16" if setup == "lora-bf16" else "float32")
        model = load_qlora_model(model_dir, S, gradient_checkpointing=True)
    else:
        model = load_model(model_dir, dtype="float32", purpose="train")
        model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + 1):
        x = blocks[(i * batch) % (len(blocks) - batch):][:batch]
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss; loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if i: times.append(time.perf_counter() - t)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"setup": setup, "tokens_per_s": batch * block * steps / sum(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable": trainable, "loss": float(loss)}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/tiny/embed_init/model"); ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block", type=int, default=256); ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2); ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.model, a.batch, a.block, a.steps))); sys.exit(0)
    import pandas as pd
    setups = a.setups.split(",")
    print(f"model {a.model}; batch {a.batch} x {a.block} tokens; {a.steps} timed steps after 1 warm-up; {a.rounds} rounds; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for r in range(a.rounds):
        for s in setups:
            p = subprocess.run([sys.executable, __file__, "--one", s, "--model", a.model, "--batch", str(a.batch), "--block", str(a.block),
                                "--steps", str(a.steps)], capture_output=True, text=True, env={**os.environ, "CMIXTRAL_QUIET": "1"})
            if p.returncode: print(p.stderr[-2000:]); sys.exit(1)
            rows.append({**json.loads(p.stdout.strip().splitlines()[-1]), "round": r}); print(rows[-1], flush=True)
    df = pd.DataFrame(rows).groupby("setup", sort=False).agg(tokens_per_s=("tokens_per_s", "median"), peak_rss_mb=("peak_rss_mb", "median"),
                                                            trainable=("trainable", "first")).round(1)
    print(df.to_string())
    tps = df.tokens_per_s
    ratios = {"QLoRA / fp32 LoRA (tokens/s)": tps.get("qlora") / tps.get("lora-fp32") if {"qlora", "lora-fp32"} <= set(tps.index) else None,
              "QLoRA with / without gradient checkpointing (tokens/s)": tps.get("qlora") / tps.get("qlora-nogc") if {"qlora", "qlora-nogc"} <= set(tps.index) else None,
              "QLoRA / full fine-tuning (tokens/s)": tps.get("qlora") / tps.get("full-fp32") if {"qlora", "full-fp32"} <= set(tps.index) else None,
              "QLoRA / fp32 LoRA (peak RSS)": df.peak_rss_mb.get("qlora") / df.peak_rss_mb.get("lora-fp32") if {"qlora", "lora-fp32"} <= set(tps.index) else None}
    for k, v in ratios.items(): print(f"{k}: {v:.2f}x" if v else f"{k}: n/a")
    out = Path(__file__).parent/"out"; out.mkdir(exist_ok=True)
    df.assign(load_average=round(os.getloadavg()[0], 1)).to_csv(out/"pretrain_speed.csv")
    print(f"wrote {out/'pretrain_speed.csv'}")
