"""Planner vs measured: the memory items of QLoRA pretraining (nbs/81_memory), measured on CPU, small Mixtral.

    PYTHONPATH=. python3 bench/memory_check.py [--config configs/mixtral-8x7b.yaml] [--hidden 768]
                                               [--layers 4] [--tokens 256] [--out bench/results/memory_check.csv]

Builds a Mixtral with Mixtral-8x7B's structure (8 experts, top-2, head dim 128, the 57,000-piece vocabulary)
at a size that runs in minutes here (0.58 GB in bf16 by default), saves it, loads it the way pretraining does
(cmixtral.pretrain.load_qlora_model with the config's pretrain section: NF4 + double quantisation, LoRA,
modules_to_save; sdpa attention), casts its floating-point parameters to bf16 as DeepSpeed's engine does under
`bf16: enabled`, then measures each item the planner lists:

- NF4 codes and quant state: bytes of every bitsandbytes Params4bit and of its quant_state tensors;
- gates + norms, embed_tokens/lm_head frozen originals and trainable copies, LoRA A/B: parameter bytes;
- activations: bytes of the tensors autograd saves for backward (torch.autograd.graph.saved_tensors_hooks,
  each storage once, parameters excluded), per decoder layer without gradient checkpointing, and what stays
  saved outside the layers with it (use_reentrant=False, as pretraining runs it);
- autocast copies: the bf16 casts of trainable weights among the saved tensors;
- logits: the logits tensor, the fp32 copy the loss makes of them (the largest bf16 -> fp32 V-wide cast the forward
  dispatches, caught with a TorchDispatchMode), the V-wide tensors the loss saves, the V-wide gradients alive
  together at one backward node (the log-softmax's and the fp32 logits');
- gradients after one backward, optimizer states after one paged 8-bit AdamW step.

One step runs under bf16 autocast on CPU, as the Trainer's bf16 runs on GPUs. Then the planner
(`qlora_memory`) is evaluated at the same sizes, and both are printed side by side with their ratio, and
written as CSV with each row's basis (measured here; or, for what a CPU cannot hold, the planner's own basis:
counted from DeepSpeed's code, or estimated). A benchmark, not a test.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


# What the CPU run measures in place of a GPU-side allocation (the planner's GPU-only rows, CUDA context, NCCL buffers,
# reduce buckets, fragmentation, stay estimated or counted from DeepSpeed's code: their `measured_MB` is empty)
NOT_ON_CPU = ("flash-attention's saved tensors (sdpa's CPU kernel measured instead)",)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/mixtral-8x7b.yaml"))
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2688)  # 3.5 x hidden, as Mixtral-8x7B
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=57000)
    ap.add_argument("--tokens", type=int, default=256)  # one sequence of this many tokens
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/memory_check.csv"))
    return ap.parse_args(argv)


def bench_model_config(a):
    "A MixtralConfig with Mixtral-8x7B's structure at the bench's sizes (the planner's own config builder)."
    from cmixtral.assets import BaseModelSpec, tiny_mixtral_config

    spec = BaseModelSpec(
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 128,
        num_key_value_heads=max(1, a.hidden // 512),
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=4096,
    )
    return tiny_mixtral_config(spec, a.vocab)


def save_bench_model(mc, folder):
    "A randomly initialised bf16 model of config `mc`, saved in `folder` with checkpoint.save_model."
    from transformers import MixtralForCausalLM

    from cmixtral.checkpoint import save_model

    torch.manual_seed(0)
    model = MixtralForCausalLM(mc).to(torch.bfloat16)
    model.config.torch_dtype = torch.bfloat16
    save_model(model, folder)
    gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    del model
    return gb


def pretrain_settings(config, model_dir):
    "The config's pretrain section, with sdpa attention (flash-attn is CUDA-only)."
    from cmixtral.core import load_config, section
    from cmixtral.pretrain import PretrainConfig

    P = section(load_config(config), "pretrain", PretrainConfig)
    P.attn_implementation = "sdpa"
    return P


def deepspeed_bf16_cast(model):
    """What DeepSpeed's engine does to the model under `bf16: enabled` (runtime/engine.py,
    `_cast_module_mixed_precision`): every floating-point parameter becomes bf16; the 4-bit codes (uint8) stay."""
    for p in model.parameters():
        if p.dtype in (torch.float32, torch.float16) and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)


def nbytes(t) -> int:
    return t.numel() * t.element_size()


def quant_state_tensors(qs):
    "The tensors of a bitsandbytes QuantState (and of its nested state for double quantisation)."
    out = [t for t in (qs.absmax, qs.code, getattr(qs, "offset", None)) if isinstance(t, torch.Tensor)]
    if getattr(qs, "state2", None) is not None:
        out += [t for t in (qs.state2.absmax, qs.state2.code) if isinstance(t, torch.Tensor)]
    return out


def static_bytes(model) -> dict:
    "Bytes of the loaded peft model by planner item: NF4 codes, quant state, gates+norms, embeddings, LoRA."
    import bitsandbytes as bnb

    m = dict.fromkeys(
        ("nf4_codes", "quant_state", "gates_norms", "embed_frozen", "embed_trainable", "lora"), 0
    )
    for mod in model.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            m["nf4_codes"] += nbytes(mod.weight)
            m["quant_state"] += sum(nbytes(t) for t in quant_state_tensors(mod.weight.quant_state))
    other = 0
    for n, p in model.named_parameters():
        if isinstance(p, bnb.nn.Params4bit):
            continue
        if "lora_" in n:
            m["lora"] += nbytes(p)
        elif "modules_to_save" in n:
            m["embed_trainable"] += nbytes(p)
        elif "original_module" in n or "embed_tokens" in n or "lm_head" in n:
            m["embed_frozen"] += nbytes(p)
        elif ".gate." in n or "norm" in n:
            m["gates_norms"] += nbytes(p)
        else:
            other += nbytes(p)
    if other:
        sys.exit(f"{other} bytes of parameters fit no planner item")
    return m


def static_pointers(model) -> set:
    "Storage addresses of every parameter, buffer and quant state: saved tensors that are not activations."
    ptrs = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    for mod in model.modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None:
            ptrs |= {t.untyped_storage().data_ptr() for t in quant_state_tensors(qs)}
    return ptrs


class SavedTensors:
    """Bytes of the tensors autograd saves in a forward pass, by where they were saved: in decoder layer i, or
    outside the layers (V-wide ones, the logits' part, apart); each storage once, static tensors excluded."""

    def __init__(self, model, layers, vocab):
        self.static, self.vocab, self.where = static_pointers(model), vocab, None
        shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad and p.dim() == 2]
        self.weight_shapes = set(shapes) | {
            s[::-1] for s in shapes
        }  # autocast's bf16 copies (some transposed)
        self.by_ptr, self.layer_inputs, self.forward = {}, {}, True
        self.handles = []
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_pre_hook(self._enter(i), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._leave))

    def _enter(self, i):
        def hook(mod, args, kwargs):
            self.where = i
            h = args[0] if args else kwargs["hidden_states"]
            if self.forward:
                self.layer_inputs[h.untyped_storage().data_ptr()] = h.untyped_storage().nbytes()

        return hook

    def _leave(self, mod, args, out):
        self.where = None

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.static and ptr not in self.by_ptr:
            if t.dim() == 2 and tuple(t.shape) in self.weight_shapes and t.dtype == torch.bfloat16:
                where = "autocast"
            elif self.where is not None:
                where = self.where
            else:
                where = "vocab" if t.shape[-1:] == (self.vocab,) else "outside"
            self.by_ptr[ptr] = (where, t.untyped_storage().nbytes())
        return t

    def bucket(self, where) -> int:
        return sum(b for w, b in self.by_ptr.values() if w == where)

    def layers_total(self) -> int:
        return sum(b for w, b in self.by_ptr.values() if isinstance(w, int))

    def close(self):
        for h in self.handles:
            h.remove()


class Fp32LogitsCopy:
    """The bytes of the largest V-wide bf16 -> fp32 copy dispatched while active: the fp32 copy of the logits that
    transformers' causal-LM loss makes (`logits.float()`) before the cross-entropy."""

    def __init__(self, vocab):
        from torch.utils._python_dispatch import TorchDispatchMode

        rec = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                src = args[0] if args else None
                if (
                    func is torch.ops.aten._to_copy.default
                    and isinstance(out, torch.Tensor)
                    and out.dtype == torch.float32
                    and out.shape[-1:] == (vocab,)
                    and isinstance(src, torch.Tensor)
                    and src.dtype == torch.bfloat16
                ):
                    rec.bytes = max(rec.bytes, nbytes(out))
                return out

        self.bytes, self.mode = 0, Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def largest_vocab_gradient(loss, logits, vocab):
    """A list that backward fills with the largest bytes of V-wide gradients alive together between loss and logits:
    at each backward node, the gradient it receives and the one it returns (each storage once)."""
    biggest, seen, stack = [0], set(), [loss.grad_fn]

    def hook(grad_inputs, grad_outputs):
        wide = {
            g.untyped_storage().data_ptr(): nbytes(g)
            for g in list(grad_inputs) + list(grad_outputs)
            if isinstance(g, torch.Tensor) and g.shape[-1:] == (vocab,)
        }
        biggest[0] = max(biggest[0], sum(wide.values()))

    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        n.register_hook(hook)
        if n is not logits.grad_fn:
            stack += [f for f, _ in n.next_functions]
    return biggest


def decoder_layers(model):
    return model.base_model.model.model.layers


def set_checkpointing(model, on: bool):
    inner = model.base_model.model
    if on:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        inner.gradient_checkpointing_disable()


def one_step(model, ids, vocab, checkpointing: bool, backward: bool = True) -> dict:
    "Forward (and backward) of one sequence under bf16 autocast: saved tensors, logits, their gradient."
    set_checkpointing(model, checkpointing)
    layers = decoder_layers(model)
    rec = SavedTensors(model, layers, vocab)
    t0 = time.time()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t),
        Fp32LogitsCopy(vocab) as copy32,
    ):
        out = model(input_ids=ids, labels=ids)
    rec.forward = False
    grad = largest_vocab_gradient(out.loss, out.logits, vocab)
    if backward:
        out.loss.backward()
    rec.close()
    saved_logits = rec.bucket("vocab")
    kept = {
        p: b for p, (w, b) in rec.by_ptr.items() if w == "outside"
    } | rec.layer_inputs  # each storage once
    return {
        "autocast": rec.bucket("autocast"),
        "layer_mean": rec.layers_total() / len(layers),
        "layers_total": rec.layers_total(),
        "layer_inputs": sum(rec.layer_inputs.values()),
        "kept_outside_layers": sum(kept.values()),
        "outside": rec.bucket("outside"),
        "logits": nbytes(out.logits),
        "logits_fp32": copy32.bytes,
        "logits_saved": saved_logits,
        "logits_grad": grad[0],
        "seconds": time.time() - t0,
        "loss": out.loss.item(),
    }


def trainable_grads(model) -> int:
    return sum(nbytes(p.grad) for p in model.parameters() if p.requires_grad and p.grad is not None)


def optimizer_state_bytes(opt) -> int:
    return sum(nbytes(v) for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))


def measure(a, model_dir) -> dict:
    "Every CPU-measurable item of one QLoRA step of the saved bench model, in bytes."
    import bitsandbytes as bnb

    from cmixtral.training import load_qlora_model

    P = pretrain_settings(a.config, model_dir)
    model = load_qlora_model(model_dir, P, gradient_checkpointing=True)
    deepspeed_bf16_cast(model)
    m = static_bytes(model)
    torch.manual_seed(0)
    ids = torch.randint(3, a.vocab, (1, a.tokens))
    plain = one_step(model, ids, a.vocab, checkpointing=False, backward=False)
    model.zero_grad(set_to_none=True)
    ckpt = one_step(model, ids, a.vocab, checkpointing=True)
    m["grads"] = trainable_grads(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.PagedAdamW8bit(trainable, lr=P.train.lr)
    opt.step()
    m["optimizer"] = optimizer_state_bytes(opt)
    m["act_checkpoints"] = ckpt["kept_outside_layers"]
    m["act_layer"] = plain["layer_mean"]
    L = len(decoder_layers(model))
    m["autocast_copies"] = ckpt["autocast"] + (plain["autocast"] - ckpt["autocast"]) / L
    m["act_all_layers"] = plain["layers_total"] + plain["outside"]
    m["logits"] = plain["logits"]
    m["logits_fp32"] = plain["logits_fp32"]
    m["logits_saved"] = plain["logits_saved"]
    m["logits_grad"] = ckpt["logits_grad"]
    print(
        f"forward without checkpointing {plain['seconds']:.0f} s, "
        f"forward+backward with it {ckpt['seconds']:.0f} s, "
        f"loss {ckpt['loss']:.2f}; checkpointed run: layer inputs {ckpt['layer_inputs'] / 1e6:.2f} MB, "
        f"all saved outside the layers (inputs included once) {ckpt['kept_outside_layers'] / 1e6:.2f} MB",
        file=sys.stderr,
    )
    return m


def compare(planned, measured: dict):
    "One row per planner item: planned and measured MB and their ratio (no measurement where a CPU has none)."
    import pandas as pd

    rows = []
    for r in planned.itertuples():
        got = measured.get(r.key)
        rows.append(
            {
                "key": r.key,
                "item": r.item,
                "planner_MB": r.bytes / 1e6,
                "measured_MB": None if got is None else got / 1e6,
                "ratio": None if not got else r.bytes / got,
                "basis": r.basis if got is None else "measured (CPU, this bench)",
            }
        )
    return pd.DataFrame(rows)


def main(argv=None):
    from cmixtral.memory import MemoryConfig, qlora_memory

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    mc = bench_model_config(a)
    with tempfile.TemporaryDirectory() as tmp:
        gb = save_bench_model(mc, Path(tmp) / "model")
        print(
            f"bench model: hidden {mc.hidden_size}, intermediate {mc.intermediate_size}, "
            f"{mc.num_hidden_layers} layers, {mc.num_local_experts} experts (top-{mc.num_experts_per_tok}), "
            f"vocab {mc.vocab_size:,}: {gb:.2f} GB in bf16; "
            f"one sequence of {a.tokens} tokens",
            file=sys.stderr,
        )
        measured = measure(a, Path(tmp) / "model")
    P = pretrain_settings(a.config, None)
    M = MemoryConfig(
        vocab_size=a.vocab,
        lora_r=P.lora.r,
        batch_size=1,
        block_size=a.tokens,
        optimizer="paged_adamw_8bit",
        zero_stage=0,
        world_size=1,
        gradient_checkpointing=True,
    )
    table = compare(qlora_memory(mc, M), measured)
    nogc = qlora_memory(mc, MemoryConfig(**{**M.__dict__, "gradient_checkpointing": False}))
    row = nogc[nogc.key == "act_layer"].iloc[0]
    extra = {
        "key": "act_all_layers",
        "basis": "measured (CPU, this bench)",
        "item": "activations: all layers, no checkpointing",
        "planner_MB": row.bytes / 1e6,
        "measured_MB": measured["act_all_layers"] / 1e6,
        "ratio": row.bytes / measured["act_all_layers"],
    }
    table.loc[len(table)] = extra
    for item in NOT_ON_CPU:
        table.loc[len(table)] = {
            "key": "",
            "item": item,
            "planner_MB": None,
            "measured_MB": None,
            "ratio": None,
            "basis": "not on CPU",
        }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    import pandas as pd

    with pd.option_context("display.width", 140, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    worst = table.ratio.dropna().sub(1).abs().max()
    print(f"largest planner error on a measured item: {worst:.1%} -> {out}")


if __name__ == "__main__":
    main()
