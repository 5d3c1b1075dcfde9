"""Write a tiny llama-architecture GGUF model with random weights, for llama-server in tests.

The model is meaningless but real: llama.cpp loads it, tokenizes with its SentencePiece-style
(SPM) vocabulary and generates. It has 2 layers, hidden size 64, 4 heads and a vocabulary of
about 1,000 tokens (3 special tokens, 256 byte-fallback tokens, the printable ASCII characters
and English word pieces), and weighs under 1 MB. The same seed writes the same bytes.

Tensor names and layout follow gguf-py (ggml-org/llama.cpp : gguf-py/gguf/constants.py,
MODEL_TENSORS[MODEL_ARCH.LLAMA]); numpy shapes are the reverse of ggml's ``ne``.

Usage: ``python tests/llamacpp/make_tiny_gguf.py OUT.gguf [--seed N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 128
CONTEXT_LENGTH = 2048
SPACE = "\u2581"  # SentencePiece's word-boundary marker, "▁"

# Word pieces: each word enters the vocabulary with all its prefixes, so SPM's bigram merges
# can build it from single characters (llama.cpp : src/llama-vocab.cpp, llm_tokenizer_spm).
WORDS_TEXT = (
    "the of and to in is was for on that with as by at from it this be are or an which "
    "have not has but were had their its one all they can more been also other new first "
    "there when some time into two only than after most these who would used her many such "
    "may over she out between about year world people state power energy token tokens "
    "prompt cache cached server model input output count counter joule watt metric system "
    "question answer tell me story once upon long ago small large fast slow light heavy "
    "green blue red white black river mountain city house garden"
)
WORDS = tuple(WORDS_TEXT.split())


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """The token pieces, their SPM scores and their token types.

    Returns:
        (pieces, scores, types): parallel lists; a longer piece scores higher, so merges
        prefer whole words.
    """
    types = gguf.TokenType
    pieces = ["<unk>", "<s>", "</s>"]
    kinds = [types.UNKNOWN, types.CONTROL, types.CONTROL]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    kinds += [types.BYTE] * 256
    seen = set(pieces)
    normal = [SPACE] + [chr(c) for c in range(33, 127)]
    for word in WORDS:
        for text in (SPACE + word, word):
            normal += [text[: i + 1] for i in range(1, len(text))]
    for piece in normal:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
            kinds.append(types.NORMAL)
    scores = [0.0] * 259 + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces[259:])]
    return pieces, scores, [int(k) for k in kinds]


def write_model(path: Path, seed: int = 0) -> Path:
    """Write the tiny model to ``path``.

    Args:
        path: Output file (.gguf); its folder must exist.
        seed: Seed of the random weights.

    Returns:
        ``path``.
    """
    pieces, scores, kinds = vocabulary()
    n_vocab = len(pieces)
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tokenergy-tiny-random")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", matrix(n_vocab, N_EMBD))
    for i in range(N_LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", matrix(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", matrix(n_vocab, N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: write the model and print its path and size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="output .gguf file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    path = write_model(args.out, args.seed)
    print(f"{path}: {path.stat().st_size:,} bytes, {len(vocabulary()[0])} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
