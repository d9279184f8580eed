"""Do two run directories hold the same results? Compares every stage table (`<stage>/*.csv`) of the two.

    python bench/compare_runs.py runs/tiny bench/out/fresh-tiny

One line per table: `same` (byte for byte), `differs` with the columns that differ (timing columns such as
`seconds` or `mb_per_s` always do), `shape` when the tables differ in size, or `missing` in the second run.
"""
import sys
from pathlib import Path
import pandas as pd

if len(sys.argv) != 3:
    sys.exit(__doc__)
a, b = Path(sys.argv[1]), Path(sys.argv[2])
for p in sorted(a.glob("*/*.csv")):
    q, name = b/p.relative_to(a), p.relative_to(a)
    if not q.exists():
        print(f"missing  {name}")
    elif p.read_bytes() == q.read_bytes():
        print(f"same     {name}")
    else:
        x, y = pd.read_csv(p), pd.read_csv(q)
        if x.shape != y.shape:
            print(f"shape    {name}: {x.shape} against {y.shape}")
        else:
            print(f"differs  {name} in {', '.join(c for c in x.columns if not x[c].equals(y[c]))}")
