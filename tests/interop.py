"""Where the interoperability corpus is: real capture files by other tools (``../shared``).

The files are read where they are, never copied into the project (see their SOURCES.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _find() -> Path | None:
    """``shared/corpus/interop`` beside this checkout or a directory above it."""
    override = os.environ.get("PCAPD_INTEROP_CORPUS")
    if override:
        return Path(override)
    for parent in Path(__file__).resolve().parents[1:]:
        candidate = parent / "shared" / "corpus" / "interop"
        if candidate.is_dir():
            return candidate
    return None


CORPUS = _find()
needs_corpus = pytest.mark.skipif(
    CORPUS is None, reason="needs ../shared/corpus/interop (the interop corpus beside the checkout)"
)


def corpus(name: str) -> Path:
    assert CORPUS is not None
    return CORPUS / name


def corpus_files(*suffixes: str) -> list[Path]:
    """Every corpus file ending in one of ``suffixes``, sorted; none without the corpus."""
    if CORPUS is None:
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name.endswith(suffixes))
