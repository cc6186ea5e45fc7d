"""The tokenizer at run time: `tokenizers.Tokenizer` on tokenizer.json, without importing transformers.

transformers' `AutoTokenizer` costs ~240 MB of resident memory on import (measured: 47 ->
286 MB peak RSS), the Rust `tokenizers` library that backs it ~46 MB.  On a 1-2 GB device
that difference matters (issue 6's 800 MB budget), so a model directory with a
tokenizer.json is read with `tokenizers` directly; the same file is what transformers'
fast tokenizer runs, so ids and decoded text are the same (tests/test_tokens.py checks
that against AutoTokenizer).  Directories with only vocab.json + merges.txt still load
through transformers (models/modeldir.py).

The engine and models/parse.py use a tokenizer only through the `Tokenizer` Protocol below:
the part of the transformers tokenizer API that `LeanTokenizer` and transformers' fast
tokenizer (the fallback) both offer, with the same meaning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence


class Tokenizer(Protocol):
    all_special_tokens: list[str]
    backend_tokenizer: Any  # a `tokenizers.Tokenizer`; parse reads its decoder's type (ByteLevel or not)

    def __len__(self) -> int:
        """Vocabulary size, added tokens included."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        """{"input_ids": [...]} of `text`."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]: ...

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str: ...


class LeanTokenizer:
    """A Tokenizer over `tokenizers.Tokenizer` alone."""

    def __init__(self, tokenizer_json: Path):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._size = self.backend_tokenizer.get_vocab_size(with_added_tokens=True)
        added = self.backend_tokenizer.get_added_tokens_decoder()
        self.all_special_tokens = [t.content for t in added.values() if t.special]

    def __len__(self) -> int:
        return self._size

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend_tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return self.backend_tokenizer.decoder.decode(list(tokens))
