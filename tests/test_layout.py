"The package's shape: narrow lines, one statement a line, one home for model weights, imports that point down."
import io, re, tokenize
from pathlib import Path
from cmixtral.core import layer_violations
from cmixtral.cli import make_parser, undocumented_options

PKG = Path(__file__).resolve().parent.parent/"cmixtral"
MODULES = [p for p in sorted(PKG.glob("*.py")) if p.name != "_modidx.py"]

def test_lines_are_narrow():
    long = [f"{p.name}:{i}" for p in MODULES for i, l in enumerate(p.read_text().splitlines(), 1) if len(l) > 120]
    assert len(long) <= 20, f"{len(long)} lines over 120 characters: {long[:30]}"

def test_one_statement_a_line():
    joins = []
    for p in MODULES:
        for t in tokenize.generate_tokens(io.StringIO(p.read_text()).readline):
            if t.type == tokenize.OP and t.string == ";":
                joins.append(f"{p.name}:{t.start[0]}")
    assert not joins, f"statements joined with ';': {joins[:20]}"

def test_only_checkpoint_loads_quantises_or_writes_models():
    load = re.compile(r"\b(Auto\w*ForCausalLM|\w+ForCausalLM|PeftModel\w*)\.from_pretrained\(")
    bad = []
    for p in MODULES:
        if p.name == "checkpoint.py":
            continue
        for i, l in enumerate(p.read_text().splitlines(), 1):
            writes_model = ".save_pretrained(" in l and "tok" not in l.lower()
            if load.search(l) or "BitsAndBytesConfig(" in l or writes_model:
                bad.append(f"{p.name}:{i}: {l.strip()}")
    assert not bad, bad

def test_imports_point_down():
    assert layer_violations() == []

def test_every_command_and_option_explains_itself():
    assert undocumented_options(make_parser()) == []

def test_train_takes_the_options_it_advertises():
    "`cmixtral train --config C --out RUN` parses (one parser with `python -m cmixtral.pretrain`)."
    a = make_parser().parse_args(["train", "--config", "configs/tiny.yaml", "--out", "runs/tiny", "--arm", "mean"])
    assert (a.config, a.out, a.arm, a.p) == ("configs/tiny.yaml", "runs/tiny", "mean", [])
    from cmixtral.pretrain import make_parser as train_parser
    b = train_parser().parse_args(["--config", "configs/tiny.yaml", "--out", "runs/tiny", "--arm", "mean"])
    assert (b.config, b.out, b.arm) == (a.config, a.out, a.arm)
