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
CPU_DTYPES = {"pretrain.quant.compute_dtype", "sft.quant.compute_dtype"}   # CPU kernels compute in float32


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
    if full == reh or path in FREE:
        return out
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    size = lambda x: isinstance(x, str) and re.fullmatch(r"[\d.]+\s*[KMGT]?i?B", x)
    if (num(full) and num(reh)) or (size(full) and size(reh)):
        return out                                        # a size or a count
    if isinstance(full, str) and isinstance(reh, str) and full.startswith("/") and reh.startswith("/"):
        return out                                        # a file-system path
    if path in CPU_DTYPES and (full, reh) == ("bfloat16", "float32"):
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
    bad["embed_init"]["methods"] = ["normal", "lecun"]
    assert config_differences(full, bad) == [
        "cluster.slurm.launcher: 'torchrun' in the full config, 'papermill' in the rehearsal",
        "data.datasets.0.source: 'hub' in the full config, 'path' in the rehearsal",
        "embed_init.methods: ['normal', 'mean', 'mean_input', 'global_mean', 'mean_calibrated', 'first_piece', "
        "'spelling'] in the full config, ['normal', 'lecun'] in the rehearsal",
        "pretrain.train.deepspeed: 'configs/deepspeed_zero2.json' in the full config, '' in the rehearsal",
    ]
