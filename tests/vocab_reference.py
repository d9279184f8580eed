"""The vocabulary stage computed in one go in the test's own process: the reference that a stopped, requeued or
shared (job array) vocab stage must reproduce."""
from pathlib import Path
import pandas as pd


def pieces(path) -> list[tuple]:
    "(piece, score, type) of every piece of a SentencePiece model file."
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto(); m.ParseFromString(Path(path).read_bytes())
    return [(p.piece, p.score, p.type) for p in m.pieces]


def uninterrupted(config, overrides, run, out) -> tuple[pd.DataFrame, list]:
    "The vocab stage's grid and merged pieces for `config` with `overrides`, from `run`'s assets, computed into `out`."
    from cmixtral.assets import base_tokenizer_path, corpus_paths
    from cmixtral.core import load_config, section
    from cmixtral.vocab import VocabConfig, choose_vocab, merge_spm, score_grid, train_spm_grid, write_training_text
    cfg = load_config(config, overrides); S = section(cfg, "vocab", VocabConfig)
    text, alp_docs = write_training_text(corpus_paths(run, "zh", "train"), out/"zh_train.txt", S.alp_every, S.alp_max_docs)
    rows = train_spm_grid(text, out/"vocab"/"spm", S, cfg.seed, out)
    base = base_tokenizer_path(run)/"tokenizer.model"
    grid = score_grid(rows, out, alp_docs, base)
    grid.to_csv(out/"grid.csv", index=False)
    chosen, _ = choose_vocab(grid, S.min_added)
    merge_spm(base, out/chosen["model"], out/"merged.model")
    return pd.read_csv(out/"grid.csv"), pieces(out/"merged.model")
