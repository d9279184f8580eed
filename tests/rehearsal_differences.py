"""Every key where `configs/rehearsal.yaml` may differ from `configs/mixtral-8x7b.yaml`, with its kind and reason.

Keys are dotted paths; `*` stands for one list index or one cluster stage name. A key that is not listed must be
equal in the two files. The kinds:

- `count`: a count or size; the rehearsal's value is a positive number of the full config's type, or a positive
  size string such as "2MB".
- `counts`: a non-empty list of `count`s (a grid of sizes).
- `parallel`: a count where 1 and more than 1 take different code paths (a process pool, gradient accumulation);
  a positive number of the same type, above 1 where the full config's is.
- `subset`: a non-empty list of items of the full config's list that keeps one item of each `source`.
- `ratio`: a ratio that the rehearsal's data cannot hold at the full value; the reason says why, and the entry
  names the one value the rehearsal takes.
- `dtype`: the CPU's compute dtype (bfloat16 -> float32).
- `kernel`: the CPU's attention kernel (flash_attention_2 -> sdpa).
- `machine`: a setting of the machine the jobs run on (SLURM partition, time, memory, GPUs, node count).
- `name`: the config's own name and description.

A pair of `count`s listed in `RATIOS` keeps the full config's ratio (LoRA's alpha / r).
Values that select a code path (0 or -1 meaning "all", "auto", "one per GPU" or "by epochs"; a launcher, source,
format, task set or method list) are never counts: the rehearsal takes the full config's path with small data.
"""
import re

COUNT, COUNTS, PARALLEL, SUBSET, RATIO = "count", "counts", "parallel", "subset", "ratio"
DTYPE, KERNEL, MACHINE, NAME = "dtype", "kernel", "machine", "name"

_model = "Mixtral-8x7B's sizes; the rehearsal's base is a 2-layer Mixtral of the same architecture"
_block = "the training length: 2,048 tokens of a 32-layer model do not fit a CPU rehearsal"
_chars = "characters evaluated or sampled: the fixture's text is a few thousand characters"
_steps = "steps between evaluations, checkpoints and log lines: an epoch of the fixture's data is a few dozen steps"
_gpu = "the machine's GPUs: the one-node SLURM of the tests has none"
_time = "the machine's time limits: the rehearsal's jobs take minutes"
_cpus = "the machine's cores per job: the one-node SLURM of the tests has 2"
_mem = "the machine's memory per job: 0, the node's, as the one-node SLURM of the tests has a few GB"

ALLOWED: dict[str, tuple] = {   # key: (kind, reason) or, for a ratio, (kind, reason, the rehearsal's value)
    "name": (NAME, "the config's own name"),
    "description": (NAME, "the config's own description"),
    # assets
    "assets.corpora.*.heldout_block": (COUNT, "documents held out in a run: the fixture's English file has dozens"),
    "assets.eval_chars": (COUNT, _chars),
    "assets.base_model.hidden_size": (COUNT, _model),
    "assets.base_model.intermediate_size": (COUNT, _model),
    "assets.base_model.num_hidden_layers": (COUNT, _model),
    "assets.base_model.num_attention_heads": (COUNT, _model),
    "assets.base_model.num_key_value_heads": (COUNT, _model),
    "assets.base_model.max_position_embeddings": (COUNT, _model),
    "assets.base_model.block_size": (COUNT, _block),
    # data
    "data.split": (RATIO, "train:dev by documents: at 999:1 each dataset needs 1,000 documents for one dev document, "
                          "and pretraining runs one whole epoch of the mixture: at 9:1 the fixture's datasets hold a "
                          "dev document each while an epoch stays a few dozen steps", [9, 1]),
    "data.block_size": (COUNT, _block),
    "data.num_proc": (PARALLEL, "tokeniser processes: 2 on a 2-core machine, still the process pool"),
    "data.chunk_mb": (COUNT, "the size of one tokeniser work item: the fixture's files are kilobytes, so 1 MB"),
    "data.batch_docs": (COUNT, "documents per tokeniser batch"),
    # embed_init
    "embed_init.chunk": (COUNT, "rows per work array"),
    "embed_init.eval_chars": (COUNT, _chars),
    "embed_init.calib_chars": (COUNT, _chars),
    "embed_init.block_size": (COUNT, _block),
    # vocab
    "vocab.char_levels": (COUNTS, "the single-character levels: the fixture's Chinese text has ~1,500 distinct ones"),
    "vocab.zh_vocab_sizes": (COUNTS, "the SentencePiece grid: sizes the fixture's text can train"),
    "vocab.input_sentence_size": (COUNT, "lines SentencePiece samples: the fixture's text has a few hundred"),
    "vocab.count_lines": (COUNT, "lines counted for the levels"),
    "vocab.num_threads": (COUNT, "SentencePiece threads per model: " + _cpus),
    "vocab.workers": (PARALLEL, "models trained at once: 2 processes on a 2-core machine, still the process pool"),
    "vocab.alp_every": (COUNT, "the ALP curve's step in added pieces: the grid spans hundreds of pieces"),
    "vocab.alp_max_docs": (COUNT, "documents per ALP point"),
    # codec
    "codec.tokenizers": (SUBSET, "hub tokenizers come from the local Hugging Face cache, which holds only files a "
                                 "package ships: Mixtral's own tokenizer (mistral-common) under Chinese-Mixtral's id"),
    # eval
    "eval.max_length": (COUNT, "the harness's context length: the rehearsal's model has 512 positions"),
    "eval.bpc_chars": (COUNT, _chars),
    "eval.block_size": (COUNT, _block),
    "eval.routing_chars": (COUNT, _chars),
    "eval.samples.prompts": (SUBSET, "generation samples: one Chinese and one English prompt"),
    "eval.samples.max_new_tokens": (COUNT, "tokens sampled per prompt"),
    # pretrain
    "pretrain.dev_chars": (COUNT, _chars),
    "pretrain.eval_chars": (COUNT, _chars),
    "pretrain.block_size": (COUNT, _block),
    "pretrain.attn_implementation": (KERNEL, "flash-attn builds only with CUDA"),
    "pretrain.quant.compute_dtype": (DTYPE, "bitsandbytes' CPU kernels compute in float32"),
    "pretrain.lora.r": (COUNT, "LoRA's rank, for a hidden size of 32 (alpha keeps alpha / r)"),
    "pretrain.lora.alpha": (COUNT, "LoRA's alpha, with r (alpha / r is the full config's)"),
    "pretrain.train.batch_size": (COUNT, "blocks per rank and micro-step (no accumulation, as in the full config): 2 x 2 "
                                    "CPU ranks keeps an epoch of the fixture's data a few dozen steps"),
    "pretrain.train.eval_steps": (COUNT, _steps),
    "pretrain.train.max_lost_minutes": (COUNT, "the work a crash may lose, which sets the steps between checkpoints: "
                                    "3 min / 45 s = 4 steps at the full config's step time"),
    "pretrain.train.logging_steps": (COUNT, _steps),
    # sft
    "sft.max_len": (COUNT, _block),
    "sft.block_size": (COUNT, _block),
    "sft.dev_every": (RATIO, "every n-th record is a dev record: at 1,000 each ShareGPT file needs 1,000 records for "
                             "one dev record, and SFT runs one whole epoch: the fixture's files have dozens", 10),
    "sft.merge_eval_chars": (COUNT, _chars),
    "sft.max_shard_size": (COUNT, "the release's shard size: the rehearsal's model is a few MB, so it still shards"),
    "sft.quant.compute_dtype": (DTYPE, "bitsandbytes' CPU kernels compute in float32"),
    "sft.attn_implementation": (KERNEL, "flash-attn builds only with CUDA"),
    "sft.lora.r": (COUNT, "LoRA's rank, for a hidden size of 32 (alpha keeps alpha / r)"),
    "sft.lora.alpha": (COUNT, "LoRA's alpha, with r (alpha / r is the full config's)"),
    "sft.train.batch_size": (COUNT, "blocks per rank and micro-step (no accumulation, as in the full config): 2 x 2 "
                                    "CPU ranks keeps an epoch of the fixture's data a few dozen steps"),
    "sft.train.eval_steps": (COUNT, _steps),
    "sft.train.max_lost_minutes": (COUNT, "the work a crash may lose, which sets the steps between checkpoints: "
                                    "2 min / 45 s = 2 steps at the full config's step time"),
    "sft.train.logging_steps": (COUNT, _steps),
    "sft.samples.prompts": (SUBSET, "generation samples: one plain and one [INST] prompt"),
    "sft.samples.max_new_tokens": (COUNT, "tokens sampled per prompt"),
    # cluster
    "cluster.slurm.job_name": (MACHINE, "the job names, so that the rehearsal's jobs are told apart"),
    "cluster.gpu": (MACHINE, "the GPU stages run on CPUs here (no job books a GPU): " + _gpu),
    "cluster.slurm.nodes": (MACHINE, "the one-node SLURM of the tests: multi-node rendezvous runs only on a cluster"),
    "cluster.slurm.gpus_per_node": (MACHINE, _gpu),
    "cluster.slurm.procs_per_node": (MACHINE, "0 is one torchrun rank per GPU, and the rehearsal has no GPUs: "
                                              "2 CPU ranks per node, so training stays data-parallel"),
    "cluster.slurm.cpus_per_task": (MACHINE, _cpus),
    "cluster.slurm.time": (MACHINE, _time),
    "cluster.slurm.setup": (MACHINE, "the machine's environment (the tests pass theirs to sbatch)"),
    "cluster.slurm.signal_seconds": (MACHINE, "the warning before the time limit, within the rehearsal's limit"),
    "cluster.stages.*.gpus_per_node": (MACHINE, _gpu),
    "cluster.stages.*.cpus_per_task": (MACHINE, _cpus),
    "cluster.stages.*.time": (MACHINE, _time),
    "cluster.stages.*.mem": (MACHINE, _mem),
    "cluster.stages.*.array": (MACHINE, "job array tasks running at once: the one-node SLURM of the tests runs two"),
    "cluster.stages.*.array_tasks": (MACHINE, "job array tasks: two shares of the rehearsal's four grid models and of its three data files"),
    "cluster.stages.*.prepare.mem": (MACHINE, _mem),
    "cluster.stages.*.prepare.time": (MACHINE, _time),
    "cluster.stages.*.release.gpus_per_node": (MACHINE, _gpu),
    "cluster.stages.*.release.cpus_per_task": (MACHINE, _cpus),
    "cluster.stages.*.release.time": (MACHINE, _time),
    "cluster.host.cpus_per_task": (MACHINE, _cpus),
    "cluster.host.mem": (MACHINE, _mem),
    "cluster.host.time": (MACHINE, _time),
    # memory
    "memory.vocab_size": (COUNT, "the extended vocabulary the plan is computed for"),
    "memory.gpu_gb": (COUNT, "the GPU memory the plan is checked against"),
    "memory.node_gb": (MACHINE, "the host RAM of a node: the test machine's"),
}

RATIOS = [("pretrain.lora.alpha", "pretrain.lora.r"), ("sft.lora.alpha", "sft.lora.r")]

_SIZE = re.compile(r"([\d.]+)\s*([KMGT]?i?B)")


def allowed(path: str) -> tuple | None:
    "The entry of dotted `path` in `ALLOWED`, where `*` matches one list index or stage name."
    for key, v in ALLOWED.items():
        if re.fullmatch(r"[^.]+".join(re.escape(p) for p in key.split("*")), path):
            return v
    return None


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _count_problem(full, reh, above_one: bool = False) -> str:
    "Why `reh` is not a count standing in for `full` ('' if it is)."
    if isinstance(full, str) and _SIZE.fullmatch(full):
        m = _SIZE.fullmatch(reh) if isinstance(reh, str) else None
        return "" if m and float(m[1]) > 0 else "not a positive size like '2MB'"
    if not (_num(full) and _num(reh) and type(full) is type(reh)):
        return f"not a count of the full config's type ({type(full).__name__})"
    if reh <= 0:
        return "not positive"
    if above_one and full > 1 and reh <= 1:
        return "1 where the full config's is above 1 (another code path)"
    return ""


def _kind_problem(kind: str, full, reh, value=None) -> str:
    "Why `reh` is not an allowed difference of `kind` from `full` ('' if it is); `value`: a ratio's listed value."
    if kind in (NAME, MACHINE):
        return ""
    if kind == RATIO:
        return "" if reh == value else f"a ratio: the full config's, or the listed {value!r}"
    if kind == COUNT:
        return _count_problem(full, reh)
    if kind == PARALLEL:
        return _count_problem(full, reh, above_one=True)
    if kind == COUNTS:
        if not (isinstance(full, list) and isinstance(reh, list) and reh):
            return "not a non-empty list of counts"
        return next((f"item {i}: {p}" for i, x in enumerate(reh) if (p := _count_problem(full[0], x))), "")
    if kind == SUBSET:
        if not (isinstance(full, list) and isinstance(reh, list) and reh):
            return "not a non-empty list"
        if extra := [x for x in reh if x not in full]:
            return f"{extra[0]!r} is not in the full config's list"
        src = lambda xs: {x.get("source") for x in xs if isinstance(x, dict)}
        if lost := sorted(src(full) - src(reh), key=str):
            return f"no item of source {lost[0]!r} is left (that path would not run)"
        return ""
    if kind == DTYPE:
        return "" if (full, reh) == ("bfloat16", "float32") else "only bfloat16 -> float32 is the CPU's dtype"
    if kind == KERNEL:
        return "" if (full, reh) == ("flash_attention_2", "sdpa") else "only flash_attention_2 -> sdpa is the CPU's"
    raise ValueError(f"unknown kind {kind!r}")


def _get(cfg, path: str):
    for k in path.split("."):
        cfg = cfg.get(k) if isinstance(cfg, dict) else None
    return cfg


def config_differences(full, reh, path: str = "") -> list[str]:
    "The places where `reh` differs from `full` in a way `ALLOWED` and `RATIOS` do not allow, one line each."
    out = []
    if not path:
        for a, r in RATIOS:
            fa, fr, ra, rr = _get(full, a), _get(full, r), _get(reh, a), _get(reh, r)
            if all(_num(x) and x > 0 for x in (fa, fr, ra, rr)) and abs(ra / rr - fa / fr) > 1e-9 * abs(fa / fr):
                out.append(f"{a} / {r}: {fa / fr:g} in the full config, {ra / rr:g} in the rehearsal (a ratio)")
    if isinstance(full, dict) and isinstance(reh, dict):
        for k in sorted(set(full) | set(reh)):
            p = f"{path}.{k}" if path else k
            if k not in reh or k not in full:
                out.append(f"{p}: only in {'the full config' if k in full else 'the rehearsal'}")
            else:
                out += config_differences(full[k], reh[k], p)
        return out
    if full == reh:
        return out
    rule = allowed(path)
    if rule is not None:
        problem = _kind_problem(rule[0], full, reh, *rule[2:])
        return out + ([] if not problem else [f"{path}: {full!r} in the full config, {reh!r} in the rehearsal: "
                                                f"{problem} ({rule[0]})"])
    if isinstance(full, list) and isinstance(reh, list) and len(full) == len(reh):
        for i, (a, b) in enumerate(zip(full, reh)):
            out += config_differences(a, b, f"{path}.{i}")
        return out
    return out + [f"{path}: {full!r} in the full config, {reh!r} in the rehearsal (not a listed difference)"]


def table() -> str:
    "`ALLOWED` as a Markdown table."
    return "\n".join(["| key | kind | why |", "|---|---|---|"] +
                     [f"| `{k}` | {v[0]} | {v[1]} |" for k, v in ALLOWED.items()])
