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
Writes bench/results/pretrain_speed.csv (nbs/40_pretrain prints it).

    OMP_NUM_THREADS=1 python bench/pretrain_speed.py --micro-batches 1,4,16 [--global-batch 16] [--model DIR] [--repeats 3]

The micro-batch comparison (nbs/81_memory): one global batch of `--global-batch` sequences split as micro-batch
m x accumulation global/m, for each m of `--micro-batches`, on the tiny Mixtral (configs/tiny.yaml's base sizes,
built here with random weights unless `--model` names a model directory) loaded by the pretrain stage's own
`load_qlora_model` (bitsandbytes NF4, double quantisation, LoRA, trained embed_tokens/lm_head, gradient
checkpointing). Every bitsandbytes de-quantisation is counted and timed: the `bitsandbytes::dequantize_4bit` op
that Linear4bit's forward (through `gemm_4bit`) and its backward (`functional.dequantize_4bit`) call, and the
`dequantize_blockwise` of the double-quantised block constants. The setups run interleaved, one optimizer step each
per repeat, after a warm-up step each, in one process; the medians and their ratios to the largest micro-batch are
printed side by side and written to bench/results/pretrain_speed_micro.csv.
"""

import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

SETUPS = ["qlora", "qlora-nogc", "lora-fp32", "lora-bf16", "full-fp32"]


def one(setup, model_dir, batch, block, steps, seed=0):
    "Time `steps` training steps of one setup in this process; return tokens/s and peak RSS."
    import torch
    from cmixtral.assets import load_mixtral_tokenizer, load_texts
    from cmixtral.checkpoint import QuantSettings, load_model
    from cmixtral.pretrain import PretrainConfig
    from cmixtral.training import load_qlora_model

    torch.manual_seed(seed)
    tok = load_mixtral_tokenizer(Path(model_dir) / "tokenizer.model")
    run_dir = Path(model_dir).parent.parent
    from cmixtral.assets import pack_documents

    texts = load_texts(run_dir, "zh", "train", 200_000) + load_texts(run_dir, "en", "train", 100_000)
    blocks = pack_documents(texts, tok, block)
    S = PretrainConfig()
    if setup.startswith("qlora"):
        model = load_qlora_model(model_dir, S, gradient_checkpointing=setup == "qlora")
    elif setup.startswith("lora"):
        S.quant = QuantSettings(
            load_in_4bit=False, compute_dtype="bfloat16" if setup == "lora-bf16" else "float32"
        )
        model = load_qlora_model(model_dir, S, gradient_checkpointing=True)
    else:
        model = load_model(model_dir, dtype="float32", purpose="train")
        model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + 1):
        x = blocks[(i * batch) % (len(blocks) - batch) :][:batch]
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "setup": setup,
        "tokens_per_s": batch * block * steps / sum(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": trainable,
        "loss": float(loss),
    }


class DequantCounter:
    """Counts and times bitsandbytes' de-quantisation ops while installed: `torch.ops.bitsandbytes.dequantize_4bit` and
    `dequantize_blockwise` are looked up at each call by Linear4bit's forward (the default `gemm_4bit`) and backward
    (`functional.dequantize_4bit`), so wrapping the namespace's entries catches every call."""

    OPS = ("dequantize_4bit", "dequantize_blockwise")

    def __init__(self):
        self.calls = dict.fromkeys(self.OPS, 0)
        self.seconds = dict.fromkeys(self.OPS, 0.0)
        self.saved = {}

    def _wrap(self, name, packet):
        counter = self

        class Overload:
            def __init__(self, op):
                self.op = op

            def __call__(self, *args, **kwargs):
                t = time.perf_counter()
                try:
                    return self.op(*args, **kwargs)
                finally:
                    counter.seconds[name] += time.perf_counter() - t
                    counter.calls[name] += 1

            def __getattr__(self, attr):
                return getattr(self.op, attr)

        class Packet:
            default = Overload(packet.default)
            out = Overload(packet.out) if hasattr(packet, "out") else None

            def __call__(self, *args, **kwargs):
                return Overload(packet)(*args, **kwargs)

            def __getattr__(self, attr):
                return getattr(packet, attr)

        return Packet()

    def __enter__(self):
        import bitsandbytes  # noqa: F401  (registers the ops)
        import torch

        ns = torch.ops.bitsandbytes
        for name in self.OPS:
            self.saved[name] = getattr(ns, name)
            setattr(ns, name, self._wrap(name, self.saved[name]))
        return self

    def __exit__(self, *exc):
        import torch

        for name, packet in self.saved.items():
            setattr(torch.ops.bitsandbytes, name, packet)

    def reset(self):
        self.calls = dict.fromkeys(self.OPS, 0)
        self.seconds = dict.fromkeys(self.OPS, 0.0)


def tiny_model_dir(config, folder, vocab):
    "The tiny config's base sizes as a randomly initialised MixtralForCausalLM saved in `folder` (fp32)."
    import torch
    from transformers import MixtralForCausalLM
    from cmixtral.assets import AssetsConfig, tiny_mixtral_config
    from cmixtral.checkpoint import save_model
    from cmixtral.core import load_config, section

    torch.manual_seed(0)
    mc = tiny_mixtral_config(section(load_config(config), "assets", AssetsConfig).base_model, vocab)
    save_model(MixtralForCausalLM(mc), folder)
    return Path(folder), mc


def micro_batches(a):
    "Seconds per optimizer step and de-quantisation per micro-step of each micro-batch split of one global batch."
    import tempfile
    import pandas as pd
    import torch
    from cmixtral.core import load_config, section
    from cmixtral.pretrain import PretrainConfig
    from cmixtral.training import load_qlora_model

    micros = [int(m) for m in a.micro_batches.split(",")]
    bad = [m for m in micros if a.global_batch % m]
    if bad:
        sys.exit(f"--micro-batches: {bad} do not divide the global batch {a.global_batch}")
    P = section(load_config(a.config), "pretrain", PretrainConfig)
    block = a.block or P.block_size
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        if a.model_dir:
            model_dir = Path(a.model_dir)
        else:
            model_dir, _ = tiny_model_dir(a.config, Path(tmp) / "model", a.vocab)
        torch.manual_seed(0)
        model = load_qlora_model(model_dir, P, gradient_checkpointing=True)
    model.train()
    from cmixtral.checkpoint import nf4_kernel_record

    kernel = nf4_kernel_record().get("dequantize_4bit", "bitsandbytes' own")  # the load checked it
    vocab = model.get_input_embeddings().weight.shape[0]
    import bitsandbytes as bnb

    n4 = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = torch.randint(3, vocab, (a.global_batch, block), generator=torch.Generator().manual_seed(0))
    print(
        f"tiny Mixtral from {a.config if not a.model_dir else a.model_dir}: {n4} NF4 linears, vocabulary {vocab:,}, "
        f"LoRA r={P.lora.r}, gradient checkpointing; global batch {a.global_batch} x {block} tokens; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {threads}; "
        f"{a.repeats} repeats after a warm-up step; de-quantisation kernel: {kernel}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    def step(m, counter):
        counter.reset()
        t = time.perf_counter()
        for x in data.split(m):  # the Trainer's accumulation: loss / accum, backward per micro-batch
            (model(input_ids=x, labels=x).loss / (a.global_batch // m)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, dict(counter.calls), dict(counter.seconds)

    rows = []
    with DequantCounter() as counter:
        for m in micros:
            step(m, counter)  # warm-up
        for r in range(a.repeats):
            for m in micros:
                sec, calls, dsec = step(m, counter)
                accum = a.global_batch // m
                rows.append(
                    {
                        "micro_batch": m,
                        "grad_accum": accum,
                        "repeat": r,
                        "step_s": sec,
                        "dequant_s_per_step": sum(dsec.values()),
                        "dequant_calls_per_micro_step": calls["dequantize_4bit"] / accum,
                        "dequant_s_per_micro_step": sum(dsec.values()) / accum,
                    }
                )
    raw = pd.DataFrame(rows)
    df = raw.groupby("micro_batch", sort=False).agg(
        grad_accum=("grad_accum", "first"),
        step_s=("step_s", "median"),
        dequant_s_per_step=("dequant_s_per_step", "median"),
        dequant_calls_per_micro_step=("dequant_calls_per_micro_step", "median"),
        dequant_s_per_micro_step=("dequant_s_per_micro_step", "median"),
    )
    ref = df.loc[max(micros)]
    df["dequant_share"] = df.dequant_s_per_step / df.step_s
    df["step_s_ratio"] = df.step_s / ref.step_s
    df["dequant_s_per_step_ratio"] = df.dequant_s_per_step / ref.dequant_s_per_step
    df = df.reset_index().assign(
        global_batch=a.global_batch,
        block=block,
        vocab=vocab,
        nf4_linears=n4,
        repeats=a.repeats,
        omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"),
        torch_threads=threads,
        dequant_kernel=kernel,
    )
    show = df[
        [
            "micro_batch",
            "grad_accum",
            "step_s",
            "step_s_ratio",
            "dequant_calls_per_micro_step",
            "dequant_s_per_micro_step",
            "dequant_s_per_step",
            "dequant_s_per_step_ratio",
            "dequant_share",
        ]
    ]
    with pd.option_context("display.width", 200):
        print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"ratios are to micro-batch {max(micros)} x accumulation {a.global_batch // max(micros)}; medians of {a.repeats}"
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.round(4).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/tiny/embed_init/model")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--micro-batches", default="", help="e.g. 1,4,16: compare micro-batch splits of one global batch"
    )
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs/tiny.yaml"))
    ap.add_argument(
        "--model-dir", default="", help="a model directory (default: the config's tiny base, built here)"
    )
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results/pretrain_speed_micro.csv")
    )
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # cmixtral from this checkout
    if a.micro_batches:
        micro_batches(a)
        sys.exit(0)
    if a.one:
        print(json.dumps(one(a.one, a.model, a.batch, a.block, a.steps)))
        sys.exit(0)
    import pandas as pd

    setups = a.setups.split(",")
    print(
        f"model {a.model}; batch {a.batch} x {a.block} tokens; {a.steps} timed steps after 1 warm-up; {a.rounds} rounds; {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for r in range(a.rounds):
        for s in setups:
            p = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    s,
                    "--model",
                    a.model,
                    "--batch",
                    str(a.batch),
                    "--block",
                    str(a.block),
                    "--steps",
                    str(a.steps),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "CMIXTRAL_QUIET": "1"},
            )
            if p.returncode:
                print(p.stderr[-2000:])
                sys.exit(1)
            rows.append({**json.loads(p.stdout.strip().splitlines()[-1]), "round": r})
            print(rows[-1], flush=True)
    df = (
        pd.DataFrame(rows)
        .groupby("setup", sort=False)
        .agg(
            tokens_per_s=("tokens_per_s", "median"),
            peak_rss_mb=("peak_rss_mb", "median"),
            trainable=("trainable", "first"),
        )
        .round(1)
    )
    print(df.to_string())
    tps = df.tokens_per_s
    ratios = {
        "QLoRA / fp32 LoRA (tokens/s)": tps.get("qlora") / tps.get("lora-fp32")
        if {"qlora", "lora-fp32"} <= set(tps.index)
        else None,
        "QLoRA with / without gradient checkpointing (tokens/s)": tps.get("qlora") / tps.get("qlora-nogc")
        if {"qlora", "qlora-nogc"} <= set(tps.index)
        else None,
        "QLoRA / full fine-tuning (tokens/s)": tps.get("qlora") / tps.get("full-fp32")
        if {"qlora", "full-fp32"} <= set(tps.index)
        else None,
        "QLoRA / fp32 LoRA (peak RSS)": df.peak_rss_mb.get("qlora") / df.peak_rss_mb.get("lora-fp32")
        if {"qlora", "lora-fp32"} <= set(tps.index)
        else None,
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x" if v else f"{k}: n/a")
    out = Path(__file__).parent / "results" / "pretrain_speed.csv"
    tmp = out.with_name(f".{out.name}.tmp")
    df.assign(load_average=round(os.getloadavg()[0], 1), rounds=a.rounds, steps=a.steps).to_csv(tmp)
    tmp.replace(out)
    print(f"wrote {out}")
