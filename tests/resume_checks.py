"""Checks that a training was resumed rather than restarted, and that it ran under the DeepSpeed engine its config asks for.

Both read the `attempts` that `train_model` records (`training.json` of an adapter): losses alone cannot tell a resume
from a restart, since every attempt is seeded the same way and a restart from step 0 logs the uninterrupted curve.
"""
import json
from pathlib import Path

# The Trainer logs each loss rounded to 4 decimals (transformers' `round(..., 4)`). A resume restores the adapter,
# the trained embeddings, optimizer, scheduler and RNG states and replays the same batches, so each step repeats the
# same floating-point work and the losses agree to rounding; at a rounding boundary a last-bit difference can still
# flip the 4th decimal. So two losses agree when they differ by at most one unit of it (1e-4, with slack for the
# binary representation of the decimals); a resume that lost any of the restored state is off by far more.
LOSS_TOL = 1.5e-4


def attempt_losses(attempt: dict) -> dict[int, float]:
    "{step: loss} that one attempt logged."
    return {int(s): v for s, v in attempt["losses"].items()}


def log_losses(log: list[dict]) -> dict[int, float]:
    "{step: loss} of a Trainer log history."
    return {r["step"]: r["loss"] for r in log if "loss" in r}


def summary(attempts: list[dict]) -> str:
    "The attempts in one line each: where they started, the steps they trained, whether they stopped."
    return "; ".join(
        f"#{a['attempt']} from {a['started_from'] or 'scratch'} (step {a['start_step']}), trained "
        f"{a['first_step']}..{a['last_step']}{', stopped' if a['stopped'] else ''}"
        for a in attempts
    )


def _steps(d) -> list[int]:
    return sorted(d)


def assert_resumed(training: dict, reference: dict, k: int, n: int, tol: float = LOSS_TOL):
    """`training` (a training.json) was stopped at step `k` and resumed from `checkpoint-k` to step `n`, and its losses
    are those of `reference` (an uninterrupted run of the same training) at every step 1..n."""
    att = training.get("attempts")
    assert att is not None, "the training record has no 'attempts': it predates attempt records"
    assert len(att) == 2, f"expected 2 attempts (stopped at {k}, resumed to {n}), found {len(att)}: {summary(att)}"
    a, b = att
    assert (a["started_from"], a["start_step"], a["first_step"], a["last_step"], a["stopped"]) == (None, 0, 1, k, True), (
        f"attempt 1 should start from scratch, train 1..{k} and stop: {summary(att)}"
    )
    assert a["last_checkpoint"] == f"checkpoint-{k}", f"attempt 1 stopped without saving checkpoint-{k}: {a['last_checkpoint']}"
    assert (b["started_from"], b["start_step"]) == (f"checkpoint-{k}", k), (
        f"attempt 2 did not resume from checkpoint-{k} at step {k}: it started from {b['started_from'] or 'scratch'} "
        f"at step {b['start_step']} and trained {b['first_step']}..{b['last_step']}"
    )
    assert (b["first_step"], b["last_step"], b["stopped"]) == (k + 1, n, False), (
        f"attempt 2 should train exactly {k + 1}..{n} and finish: {summary(att)}"
    )
    ref = reference.get("attempts") or []
    assert len(ref) == 1 and (ref[0]["started_from"], ref[0]["first_step"], ref[0]["last_step"], ref[0]["stopped"]) == (
        None, 1, n, False
    ), f"the reference is not one uninterrupted attempt 1..{n}: {summary(ref)}"
    kernels = {x.get("nf4_kernel") for x in att + ref}
    assert len(kernels) == 1, f"the attempts and the reference de-quantised NF4 with different kernels: {kernels}"
    la, lb, lr = attempt_losses(a), attempt_losses(b), log_losses(reference["log"])
    assert _steps(la) == list(range(1, k + 1)) and _steps(lb) == list(range(k + 1, n + 1)), (
        f"the attempts logged losses at steps {_steps(la)} and {_steps(lb)}, not at every step (logging_steps must be 1)"
    )
    assert _steps(lr) == list(range(1, n + 1)), f"the reference logged losses at steps {_steps(lr)}, not 1..{n}"
    both = {**la, **lb}
    assert log_losses(training["log"]) == both, "the training's log disagrees with the losses its attempts recorded"
    off = [(s, both[s], lr[s]) for s in range(1, n + 1) if abs(both[s] - lr[s]) > tol]
    assert not off, f"losses (step, resumed, reference) differ by more than {tol}: {off[:5]}"


def _dtype(name) -> str:
    "A dtype's name as torch prints it, from DeepSpeed's or torch's spelling."
    names = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
             "bfp16": "bfloat16"}
    name = str(name).removeprefix("torch.")
    return names.get(name, name)


def deepspeed_config(path) -> dict:
    "(ZeRO stage, grad_accum_dtype or None) that a DeepSpeed JSON config asks for."
    ds = json.loads(Path(path).read_text())
    return {"stage": ds.get("zero_optimization", {}).get("stage", 0),
            "grad_accum_dtype": ds.get("data_types", {}).get("grad_accum_dtype")}


def assert_deepspeed(attempt: dict, stage: int, world_size: int, grad_accum_dtype: str | None = None):
    """The attempt ran under a DeepSpeed engine with ZeRO `stage` over `world_size` ranks, accumulating gradients in
    `grad_accum_dtype` (DeepSpeed's or torch's name; None: the config sets none, so the weights' dtype)."""
    ds = attempt.get("deepspeed")
    assert ds, f"attempt {attempt.get('attempt')} ran without DeepSpeed (no engine recorded)"
    want = _dtype(grad_accum_dtype) if grad_accum_dtype is not None else _dtype(ds["model_dtype"])
    got = (ds["zero_stage"], ds["world_size"], _dtype(ds["grad_accum_dtype"]))
    assert got == (stage, world_size, want), (
        f"attempt {attempt.get('attempt')} ran DeepSpeed {ds['version']} with ZeRO stage {got[0]}, world size {got[1]}, "
        f"gradients accumulated in {got[2]}; the config asks for stage {stage}, world size {world_size}, {want}"
    )
