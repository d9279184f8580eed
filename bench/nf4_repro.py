"""bitsandbytes' CPU `dequantize_4bit` (NF4, blocksize 64) against a pure-torch de-quantisation of the same codes.

Standalone: needs only torch and bitsandbytes. For each weight shape, quantise with `quantize_4bit` (with and
without double quantisation), de-quantise with bitsandbytes, and de-quantise the same packed codes and absmax by
hand: level[code] x absmax of the code's block, blocks of 64 running over the flattened tensor. Prints the CPU's
AVX-512 flag, the versions, and the largest |bitsandbytes - reference| per shape, next to the reference's own
quantisation error. Run: `python bench/nf4_repro.py`.
"""
import platform

import bitsandbytes
import bitsandbytes.functional as F
import torch

NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])
SHAPES = [(32, 32), (64, 32), (16, 96), (32, 64), (32, 128), (128, 4096), (8, 14336)]


def cpuinfo(key: str) -> str:
    "The first `key` line of /proc/cpuinfo ('?' where there is none)."
    try:
        return next(l for l in open("/proc/cpuinfo") if l.startswith(key)).partition(":")[2].strip()
    except (OSError, StopIteration):
        return "?"


def cpu_flag(name: str) -> str:
    "'yes' or 'no' for a CPU flag ('?' where /proc/cpuinfo is missing)."
    flags = cpuinfo("flags")
    return "?" if flags == "?" else "yes" if name in flags.split() else "no"


def absmax_of(s) -> torch.Tensor:
    "Per-block absmax; under double quantisation decoded: 8-bit map[code] x scale of its group of 256 + offset."
    if not s.nested:
        return s.absmax.float()
    i = torch.arange(s.absmax.numel())
    return s.state2.code[s.absmax.long()] * s.state2.absmax[i // s.state2.blocksize] + s.offset


def reference(q: torch.Tensor, s) -> torch.Tensor:
    "NF4 de-quantisation in pure torch: two codes per byte (high nibble first), level x absmax of its block."
    b = q.reshape(-1).view(torch.uint8)
    codes = torch.stack([b >> 4, b & 15], 1).reshape(-1).long()
    n = s.shape.numel()
    return (NF4[codes[:n]] * absmax_of(s)[torch.arange(n) // s.blocksize]).reshape(s.shape)


def main():
    print(f"cpu: {cpuinfo('model name')}, avx512f: {cpu_flag('avx512f')}, "
          f"avx512_bf16: {cpu_flag('avx512_bf16')}, torch cpu capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}, python {platform.python_version()}")
    print(f"{'shape':>12} {'double quant':>12} {'max |bnb - ref|':>16} {'max |ref - w|':>14} {'max |w|':>8}")
    torch.manual_seed(0)
    for shape in SHAPES:
        w = torch.randn(shape) * 0.02
        for nested in (False, True):
            q, s = F.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4")
            ref = reference(q, s)
            diff = (F.dequantize_4bit(q, s) - ref).abs().max().item()
            print(f"{shape!s:>12} {nested!s:>12} {diff:>16.4g} {(ref - w).abs().max().item():>14.4g} "
                  f"{w.abs().max().item():>8.3g}")


if __name__ == "__main__":
    main()
