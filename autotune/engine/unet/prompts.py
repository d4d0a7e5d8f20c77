"""Prompts as token sequences: validation, word positions, and Prompt-to-Prompt's token alignment.

The alignment follows Prompt-to-Prompt (Hertz et al., 2022): a global alignment of the source and
target token sequences for refinement, and a word-by-word mapper for word swaps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from autotune.errors import InputError
from autotune.task import normalise_word

log = logging.getLogger(__name__)
MAX_TOKENS = 77

@dataclass(frozen=True)
class TokenizedPrompt:
    text: str
    ids: list[int]  # with start and end tokens, unpadded
    word_spans: list[tuple[str, list[int]]]  # each whitespace word of the prompt and its token positions


def tokenize_prompt(tokenizer, text: str, role: str = "prompt") -> TokenizedPrompt:
    """Tokenize and check a prompt; words are located so that attention can be steered by word."""
    if not isinstance(text, str):
        raise InputError(f"{role} must be a string, got {type(text).__name__}")
    ids = tokenizer(text, add_special_tokens=True, truncation=False).input_ids
    if len(ids) > MAX_TOKENS:
        raise InputError(
            f"{role} is {len(ids) - 2} tokens long; CLIP reads at most {MAX_TOKENS - 2}. Shorten it: {text[:80]!r}..."
        )
    spans: list[tuple[str, list[int]]] = []
    pos = 1
    for word in text.split():
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        spans.append((word, list(range(pos, pos + n))))
        pos += n
    if pos != len(ids) - 1:  # the per-word split disagrees with the whole-prompt tokenization
        log.debug("word spans of %r do not add up to its tokens; word positions may be approximate", text)
    return TokenizedPrompt(text, ids, spans)


def word_token_indices(prompt: TokenizedPrompt, words: str, role: str = "prompt") -> list[int]:
    """Token positions of `words` (one or more whitespace-separated words) in the prompt."""
    wanted = [normalise_word(w) for w in words.split()]
    if not wanted or not all(wanted):
        raise InputError(f"blend word {words!r} is empty; give a word that appears in the {role}")
    have = [normalise_word(w) for w, _ in prompt.word_spans]
    found: list[int] = []
    for start in range(len(have) - len(wanted) + 1):
        if have[start : start + len(wanted)] == wanted:
            for _, idx in prompt.word_spans[start : start + len(wanted)]:
                found.extend(idx)
    if not found:
        raise InputError(
            f"blend word {words!r} does not appear in the {role} {prompt.text!r}; "
            "blend words must be words of their prompts (source word, target word)"
        )
    return [i for i in found if i < MAX_TOKENS]


def refinement_mapper(source: TokenizedPrompt, target: TokenizedPrompt) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target token, the aligned source token (`mapper`) and whether it has one (`alphas`)."""
    x, y = source.ids, target.ids
    n, m = len(x), len(y)
    # Global alignment, gap 0, match 1, mismatch -1; ties prefer left, then up, then diagonal (as P2P).
    score = [[0] * (m + 1) for _ in range(n + 1)]
    trace = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        trace[0][j] = 1
    for i in range(1, n + 1):
        trace[i][0] = 2
    trace[0][0] = 4
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left = score[i][j - 1]
            up = score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    pairs: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        move = trace[i][j]
        if move == 3:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif move == 1:
            j -= 1
            pairs.append((j, -1))
        elif move == 2:
            i -= 1
        else:
            break
    pairs.reverse()
    base = torch.tensor(pairs, dtype=torch.long)
    alphas = torch.ones(MAX_TOKENS)
    alphas[: len(pairs)] = base[:, 1].ne(-1).float()
    mapper = torch.zeros(MAX_TOKENS, dtype=torch.long)
    mapper[: len(pairs)] = base[:, 1]
    mapper[len(pairs) :] = m + torch.arange(MAX_TOKENS - m)
    mapper = mapper.clamp(min=0, max=MAX_TOKENS - 1)  # gaps (-1) have alpha 0; any index will do
    return mapper, alphas


def replacement_mapper(source: TokenizedPrompt, target: TokenizedPrompt) -> torch.Tensor:
    """A (77, 77) matrix taking source-token attention to target tokens, for a word swap."""
    words_x = [w for w, _ in source.word_spans]
    words_y = [w for w, _ in target.word_spans]
    if len(words_x) != len(words_y):
        raise InputError(
            "word-swap (p2p_mode='replace') needs prompts with the same number of words "
            f"({len(words_x)} vs {len(words_y)}); use p2p_mode='refine' for prompts of different length"
        )
    changed = [k for k in range(len(words_y)) if words_x[k] != words_y[k]]
    src_idx = [source.word_spans[k][1] for k in changed]
    tgt_idx = [target.word_spans[k][1] for k in changed]
    mapper = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    i = j = cur = 0
    while i < MAX_TOKENS and j < MAX_TOKENS:
        if cur < len(src_idx) and src_idx[cur] and src_idx[cur][0] == i:
            s, t = src_idx[cur], tgt_idx[cur]
            if len(s) == len(t):
                mapper[s, t] = 1
            else:
                for tt in t:
                    mapper[s, tt] = 1 / len(t)
            cur += 1
            i += len(s)
            j += len(t)
        elif cur < len(src_idx):
            mapper[i, j] = 1
            i += 1
            j += 1
        else:
            mapper[j, j] = 1
            i += 1
            j += 1
    return mapper
