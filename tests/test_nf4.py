"4-bit weights are checked, not trusted: bitsandbytes' NF4 de-quantisation against a pure-torch reference."
import json, subprocess, sys
from pathlib import Path
import pytest, torch
import bitsandbytes.functional as bnbf
from cmixtral.checkpoint import *

ROOT = Path(__file__).resolve().parent.parent
PARTIAL = [(32, 32), (16, 96), (64, 32), (48, 80)]         # rows that are not whole blocks of 64
WHOLE = [(32, 64), (32, 128), (128, 4096), (8, 14336)]     # rows of whole blocks (the tiny pipeline's widths)

def quantised(shape, nested, seed=0, dtype=torch.float32):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    return bnbf.quantize_4bit(w.to(dtype), blocksize=64, compress_statistics=nested, quant_type="nf4")

def run(code: str) -> dict:
    "Run `code` in a fresh Python (its own kernel registrations) and return the JSON it prints last."
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
    return json.loads(r.stdout.strip().splitlines()[-1])

def test_after_the_check_partial_blocks_match_the_reference():
    "On whatever CPU this is: the check runs, and afterwards bitsandbytes de-quantises rows of partial blocks right."
    rec = check_nf4_kernel()
    assert rec == nf4_kernel_record() and rec["max_diff"] == 0 and rec["output_diff"] == 0, rec
    errors = nf4_kernel_errors(PARTIAL + WHOLE[:2])
    assert errors["ok"], f"bitsandbytes' NF4 kernels still differ from the reference after the check: {errors}"
    for shape in PARTIAL:
        for nested in (False, True):
            for dt in (torch.float32, torch.bfloat16):
                q, s = quantised(shape, nested, dtype=dt)
                want = nf4_reference(q, block_scales(s), s.shape, 64, dt)
                got = bnbf.dequantize_4bit(q, s)
                d = (got.float() - want.float()).abs().max().item()
                assert d == 0, f"{shape} nested={nested} {dt}: bitsandbytes differs from the reference by {d:.3g}"

FORCED = """
import json, torch
import bitsandbytes.functional as bnbf
from cmixtral.checkpoint import *

def wrong_on_partial_rows(A, absmax, blocksize, quant_type, shape, dtype):
    w = nf4_reference(A, absmax, shape, blocksize, dtype)
    if shape[-1] % blocksize:
        w[1::2] *= 2
    return w

bad = cpu_dequantize_4bit(wrong_on_partial_rows)   # a faulty CPU kernel, whatever this CPU is (kept: a dropped
q, s = bnbf.quantize_4bit(torch.randn(32, 32) * 0.02, blocksize=64, quant_type="nf4")   # Library unregisters)
ref = nf4_reference(q, block_scales(s), s.shape)
before = (bnbf.dequantize_4bit(q, s) - ref).abs().max().item()
assert before == ref[1::2].abs().max().item(), "the stand-in kernel is not the one in use"
{call}
after = (bnbf.dequantize_4bit(q, s) - ref).abs().max().item()
print(json.dumps({{"before": before, "after": after, "record": nf4_kernel_record(), "extra": extra}}))
"""

def test_a_faulty_kernel_is_caught_and_replaced():
    "CPU-independent: a stand-in kernel wrong on partial-block rows is found, and the pure-torch kernel takes over."
    out = run(FORCED.format(call="extra = check_nf4_kernel() == check_nf4_kernel()"))
    rec = out["record"]
    assert out["before"] > 0.01 and out["after"] == 0, out
    assert rec["dequantize_4bit"] == "bitsandbytes' pure-torch kernel" and rec["found_max_diff"] > 0.01, rec
    assert [tuple(s) for s in rec["found_wrong"]] == [(32, 32), (16, 96), (64, 32)], rec
    assert rec["max_diff"] == 0 and rec["output_diff"] == 0 and out["extra"], rec

def test_every_4bit_load_path_runs_the_check(tmp_path):
    "`load_model` (training, eval, generation all load through it) and `dequantized_tensor` run the check first."
    from cmixtral.assets import BaseModelSpec, build_tiny_mixtral
    spec = BaseModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                         num_local_experts=2)
    build_tiny_mixtral(spec, vocab_size=256).save_pretrained(tmp_path)
    load = f"""m = load_model({str(tmp_path)!r}, QuantSettings(compute_dtype="float32"))
w = m.model.layers[0].self_attn.q_proj.weight
extra = (m.dequantize().model.layers[0].self_attn.q_proj.weight
         - nf4_reference(w.data, block_scales(w.quant_state), w.quant_state.shape)).abs().max().item()"""
    out = run(FORCED.format(call=load))
    assert out["after"] == 0 and out["extra"] == 0 and out["record"]["found_max_diff"] > 0.01, out
    deq = """w = torch.randn(32, 32) * 0.02
d = dequantized_tensor(w, QuantSettings(compute_dtype="float32", double_quant=False))
q2, s2 = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=False, quant_type="nf4")
extra = (d - nf4_reference(q2, block_scales(s2), s2.shape)).abs().max().item()"""
    out = run(FORCED.format(call=deq))
    assert out["after"] == 0 and out["extra"] == 0 and out["record"]["found_max_diff"] > 0.01, out

def test_whole_blocks_are_bitwise_the_same_after_the_switch():
    "The tiny pipeline's widths are whole blocks: the pure-torch kernel gives bit for bit what the stock one gave."
    out = run(f"""
import json, torch
import bitsandbytes.functional as bnbf
from cmixtral.checkpoint import *
shapes, got = {WHOLE!r}, []
for dt in (torch.float32, torch.bfloat16):
    for i, sh in enumerate(shapes):
        for nested in (False, True):
            w = torch.randn(sh, generator=torch.Generator().manual_seed(i)) * 0.02
            q, s = bnbf.quantize_4bit(w.to(dt), blocksize=64, compress_statistics=nested, quant_type="nf4")
            got.append((q, s, bnbf.dequantize_4bit(q, s)))       # the stock kernel: no check has run yet
lib = cpu_dequantize_4bit(torch_dequantize_4bit)   # the kernel the check switches to (kept: a dropped Library
same = all(torch.equal(bnbf.dequantize_4bit(q, s), d) for q, s, d in got)   # unregisters it)
q, s = bnbf.quantize_4bit(torch.randn(32, 32) * 0.02, blocksize=64, quant_type="nf4")
in_use = torch.equal(bnbf.dequantize_4bit(q, s), nf4_reference(q, block_scales(s), s.shape))
print(json.dumps({{"same": same, "n": len(got), "in_use": in_use}}))
""")
    assert out["n"] == 16 and out["in_use"], out
    assert out["same"], "the pure-torch kernel's whole-block weights differ from the stock kernel's"
