"""Where each whole-model call puts the model, decided without GPUs: the decisions are read off the arguments handed to
`from_pretrained` on a pretend machine with 8 GPUs, under a single process and under torchrun."""
import pytest, torch
import bitsandbytes  # noqa: F401  (imported before the pretend GPUs: it picks its backend on import)
import transformers
from cmixtral import checkpoint
from cmixtral.assets import BaseModelSpec, package_file, prepare_base_model
from cmixtral.checkpoint import QuantSettings, load_model, quantisation_device
from cmixtral.embed_init import NEEDS_MODEL, init_rows
from cmixtral.evaluate import load_model as eval_load_model
from cmixtral.pretrain import PretrainConfig
from cmixtral.training import load_qlora_model

HUB_ID = "mistralai/Mixtral-8x7B-v0.1"  # never fetched: the load stops at from_pretrained


class Loaded(Exception):
    "Raised by the pretend `from_pretrained` with the keyword arguments it was given."


@pytest.fixture
def eight_gpus(monkeypatch):
    "A machine with 8 GPUs as far as placement can tell; `from_pretrained` raises `Loaded` with its arguments."
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def from_pretrained(path, **kw):
        raise Loaded(kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return monkeypatch


def placed(call) -> dict:
    "The keyword arguments `call` handed to `from_pretrained`."
    with pytest.raises(Loaded) as e:
        call()
    return e.value.args[0]


def test_whole_model_passes_spread_over_the_gpus_in_the_stored_dtype(eight_gpus):
    "Assets' base measurement, embed_init's base, pretrain's base measurement and SFT's merges: device_map auto."
    kw = placed(lambda: load_model(HUB_ID))
    assert kw["device_map"] == "auto" and kw["dtype"] == "auto" and kw["quantization_config"] is None
    kw = placed(lambda: prepare_base_model(BaseModelSpec(source="hub", path=HUB_ID), None, None, None))
    assert kw["device_map"] == "auto" and kw["dtype"] == "auto"


def test_embed_init_loads_the_base_spread_and_as_stored_for_the_methods_that_run_it(eight_gpus):
    kw = placed(lambda: init_rows(HUB_ID, None, None, method=NEEDS_MODEL[0]))
    assert kw["device_map"] == "auto" and kw["dtype"] == "auto"  # bfloat16 at full scale, never a float32 copy


def test_eval_spreads_the_model_in_the_configured_dtype_and_4bit_computes_in_bfloat16(eight_gpus):
    tok = str(package_file("mistral_common", "data/tokenizer.model.v1"))
    spec = {"name": "base", "model": HUB_ID, "tokenizer": tok, "adapter": None}
    kw = placed(lambda: eval_load_model(spec, dtype="bfloat16"))
    assert kw["device_map"] == "auto" and kw["dtype"] == "bfloat16"
    kw = placed(lambda: eval_load_model(spec, "bfloat16", QuantSettings()))
    assert kw["device_map"] == "auto" and kw["dtype"] == "bfloat16"
    assert kw["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("local_rank", [0, 5])
def test_training_under_torchrun_puts_one_4bit_copy_on_each_ranks_gpu(eight_gpus, local_rank):
    eight_gpus.setenv("LOCAL_RANK", str(local_rank))
    eight_gpus.setenv("WORLD_SIZE", "8")
    kw = placed(lambda: load_qlora_model(HUB_ID, PretrainConfig()))
    assert kw["device_map"] == {"": local_rank}
    assert kw["quantization_config"].load_in_4bit and kw["dtype"] == "bfloat16"
    # a whole-model pass in the same job still spreads: the stage notebook runs it in one process after torchrun
    assert placed(lambda: load_model(HUB_ID))["device_map"] == "auto"


def test_the_cpu_keeps_every_call_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for purpose in checkpoint.PURPOSES:
        assert checkpoint.device_map(purpose) == {"": "cpu"}
    assert quantisation_device() == torch.device("cpu")
    assert checkpoint.compute_dtype(QuantSettings()) == torch.float32


def test_the_shard_by_shard_dequantisation_quantises_on_the_first_gpu(eight_gpus):
    assert quantisation_device() == torch.device("cuda", 0)
