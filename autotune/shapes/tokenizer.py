"""The real CLIP BPE tokenizer, built offline from the vocabulary that open-clip-torch ships.

Real checkpoints carry their own tokenizer; this one is for models built or trained here
(the shapes model, test pipelines), so that their token ids equal OpenAI CLIP's.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

MAX_TOKENS = 77


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte <-> printable-unicode table (same as GPT-2's).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe_source() -> Path:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch's BPE vocabulary is missing at {path}; reinstall open-clip-torch.")
    return path


def write_clip_tokenizer_files(directory: str | Path) -> Path:
    """Write `vocab.json` (49,408 tokens) and `merges.txt` (48,894 merges) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_source()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return directory


def clip_tokenizer(directory: str | Path | None = None) -> CLIPTokenizer:
    """A `CLIPTokenizer` identical to OpenAI CLIP's, made without a model hub.

    `directory` is where the vocabulary files are written (a cache folder by default).
    """
    if directory is None:
        return _cached_tokenizer()
    directory = write_clip_tokenizer_files(directory)
    # Paths must be positional: transformers 5 silently ignores them as keywords.
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=MAX_TOKENS)


@lru_cache(maxsize=1)
def _cached_tokenizer() -> CLIPTokenizer:
    import os

    cache = Path(os.environ.get("AUTOTUNE_CACHE", Path.home() / ".cache" / "autotune")) / "clip-tokenizer"
    if not (cache / "vocab.json").is_file() or not (cache / "merges.txt").is_file():
        write_clip_tokenizer_files(cache)
    return CLIPTokenizer(str(cache / "vocab.json"), str(cache / "merges.txt"), model_max_length=MAX_TOKENS)
