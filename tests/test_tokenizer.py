"""The offline Qwen2.5 tokenizer is byte-exact: golden ids and an independent BPE (tiktoken)."""

import pytest

from rfedge_export.qwen_vocab import EXTRA_0_ID, QWEN25_MATH_PRM_SPECIALS, build_tokenizer, load_ranks

GOLDEN = [("12345", [16, 17, 18, 19, 20]), ("Hello world", [9707, 1879]), ("\n\n", [271]),
          ("<|endoftext|>", [151643]), ("<|im_start|>user", [151644, 872])]

SAMPLES = [
    "Start with 12. Then add 7, subtract 5, and add 30. What is the final number?",
    "<think>\n12 + 7 = 19\n\n19 - 5 = 14\n</think>\n\nThe final number is 14.",
    "Let $f(x) = x^2 + 3x$. Then f'(x) = 2x + 3, so f'(2) = 7. \\boxed{7}",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Combien font 7 × 8 ? 答案是 56。 🎉 naïve café — ‘quotes’ “double” I'm you'll WE'RE",
    "   leading spaces\t\ttabs\r\nwindows\n\n\n\ntrailing   ",
    "e\u0301 Å Å ﬁ ½ \u200b zero-width \u202eRTL\u202c العربية עברית",
]


@pytest.mark.parametrize("text,ids", GOLDEN)
def test_golden_ids(qwen_tokenizer, text, ids):
    assert qwen_tokenizer.encode(text, add_special_tokens=False).ids == ids


def test_matches_tiktoken_bpe(qwen_tokenizer):
    tiktoken = pytest.importorskip("tiktoken")
    import unicodedata

    from rfedge_export.qwen_vocab import QWEN_PATTERN

    enc = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=load_ranks(), special_tokens={})
    for text in SAMPLES:
        expected = enc.encode(unicodedata.normalize("NFC", text), disallowed_special=())
        assert qwen_tokenizer.encode(text, add_special_tokens=False).ids == expected, text


def test_vocab_size_and_decode(qwen_tokenizer):
    assert qwen_tokenizer.get_vocab_size() == 151665
    ids = qwen_tokenizer.encode(SAMPLES[4], add_special_tokens=False).ids
    assert qwen_tokenizer.decode(ids) == SAMPLES[4]


def test_math_prm_separator():
    tk = build_tokenizer(QWEN25_MATH_PRM_SPECIALS)
    assert tk.token_to_id("<extra_0>") == EXTRA_0_ID
    assert tk.encode("a<extra_0>", add_special_tokens=False).ids[-1] == EXTRA_0_ID
