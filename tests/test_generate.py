"Generation: batches, seeds, streaming, 4-bit loading and the command line, on a real (small) Mixtral."
import io
import pytest
from cmixtral.core import CmixtralError
from cmixtral.assets import BaseModelSpec, build_tiny_mixtral, package_file
from cmixtral.checkpoint import QuantSettings, load_mixtral_tokenizer, load_pair
from cmixtral.generate import SamplingConfig, generate, generate_command

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")/"m"
    build_tiny_mixtral(BaseModelSpec(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                     num_key_value_heads=2)).save_pretrained(d)
    load_mixtral_tokenizer(package_file("mistral_common", "data/tokenizer.model.v1")).save_pretrained(d)
    return d

def test_batch_seed_stream_and_4bit(small):
    model, tok = load_pair(small)
    S = SamplingConfig(max_new_tokens=6)
    a = generate(model, tok, ["我的名字是", "The capital of France is"], S)
    assert len(a) == 2 and a == generate(model, tok, ["我的名字是", "The capital of France is"], S)
    got = []
    s = generate(model, tok, "我的名字是", S, stream=got.append)
    assert "".join(got).rstrip("\n") == s[0]
    q, qtok = load_pair(small, quant=QuantSettings(compute_dtype="float32"))
    assert len(generate(q, qtok, ["我的名字是"], SamplingConfig(max_new_tokens=4))) == 1

def test_command_prints_examples_and_refuses_bad_input(small, tmp_path):
    buf = io.StringIO()
    r = generate_command(small, ["我的名字是"], S=SamplingConfig(max_new_tokens=4), out=buf)
    assert r[0] in buf.getvalue() and "[Prompt]:\n我的名字是" in buf.getvalue()
    with pytest.raises(CmixtralError, match="not a Hugging Face model directory"):
        generate_command(small.parent, ["x"])
