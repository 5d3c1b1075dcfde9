"""The build script and the tiny-model generator, without building anything.

These run everywhere (no llama-server needed): the generator's model is read back with gguf's
own reader, and the build script is run against a cache that already holds a binary.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

HERE = Path(__file__).resolve().parent
VERSION = (HERE / "llama-cpp-python.version").read_text().strip()


def make_model(out: Path, *extra: str) -> Path:
    subprocess.run(
        [sys.executable, str(HERE / "make_tiny_gguf.py"), str(out), *extra],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def field_value(reader: gguf.GGUFReader, key: str) -> object:
    found = reader.get_field(key)
    assert found is not None, key
    return found.contents()


def test_tiny_model_is_a_small_llama_with_an_spm_vocabulary(tmp_path: Path) -> None:
    path = make_model(tmp_path / "tiny.gguf")
    assert path.stat().st_size < 1_000_000
    reader = gguf.GGUFReader(path)
    assert field_value(reader, "general.architecture") == "llama"
    assert field_value(reader, "llama.block_count") == 2
    assert field_value(reader, "llama.embedding_length") == 64
    assert field_value(reader, "llama.attention.head_count") == 4
    assert field_value(reader, "tokenizer.ggml.model") == "llama"
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    assert 900 <= len(tokens) <= 1100
    assert len(set(tokens)) == len(tokens)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    # ggml's ne is (n_embd, n_vocab): the reverse of numpy's shape.
    assert [int(n) for n in embd.shape] == [64, len(tokens)]


def test_tiny_model_is_reproducible_and_seeded(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a.gguf").read_bytes()
    b = make_model(tmp_path / "b.gguf").read_bytes()
    c = make_model(tmp_path / "c.gguf", "--seed", "1")
    assert a == b
    weights = {
        t.name: np.array(t.data) for t in gguf.GGUFReader(c).tensors if t.name.endswith("_q.weight")
    }
    first = {
        t.name: np.array(t.data)
        for t in gguf.GGUFReader(tmp_path / "a.gguf").tensors
        if t.name.endswith("_q.weight")
    }
    assert weights.keys() == first.keys()
    assert all(not np.array_equal(weights[k], first[k]) for k in weights)


def test_build_script_skips_when_the_binary_is_cached(tmp_path: Path) -> None:
    """Idempotent: a cached binary that runs means no download and no build."""
    binary = tmp_path / VERSION / "llama-server"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\necho 'version: 0 (test double)'\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    result = subprocess.run(
        ["bash", str(HERE / "build_llama_server.sh")],
        env={**os.environ, "TOKENERGY_LLAMA_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"already built: {binary}" in result.stdout
    assert "downloading" not in result.stdout
