"""Embedder adapters: a local sentence-transformers or fastembed model in, an Embedder out (texts to unit vectors),
for `Engine.load(..., embedder=...)` when WordLlama, the default, is not the model a team wants.

Both load from files already on this machine and never download: sentence-transformers from a model folder
(`SentenceTransformer(path, local_files_only=True)`), fastembed from a folder of its ONNX files or from its cache
(`TextEmbedding(..., local_files_only=True)`). Each package is imported only when its adapter is called; a missing
one raises EmbedderUnavailable naming the `pip install` that brings it. Both depend on numpy themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.runtime.embedder import EmbedderUnavailable

if TYPE_CHECKING:
    import numpy as np

__all__ = ["LocalEmbedder", "fastembed_embedder", "sentence_transformers_embedder"]


class LocalEmbedder:
    """An Embedder over a loaded model: `encode(texts)` gives one vector per text, returned here as float32 unit
    rows (a zero vector stays zero). `model` is the loaded model object, `name` what was loaded (for messages)."""

    def __init__(self, name: str, model: Any, encode: Callable[[list[str]], Any]) -> None:
        self.name = name
        self.model = model
        self.encode = encode

    def __call__(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        rows = np.asarray(self.encode(list(texts)), dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(texts):
            raise ValueError(f"{self.name} returned shape {rows.shape} for {len(texts)} texts")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)

    def __repr__(self) -> str:
        return f"LocalEmbedder({self.name!r})"


def _need(package: str, install: str) -> EmbedderUnavailable:
    return EmbedderUnavailable(
        f"this embedder adapter needs the package {package}: pip install {install} "
        f"(or use the default embedder: pip install 'modelroute[semantic]')"
    )


def _folder(path: str | os.PathLike[str], what: str) -> str:
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{what}: no model folder at {folder!r} (a local model path: modelroute downloads no model)"
        )
    return folder


def sentence_transformers_embedder(path: str | os.PathLike[str], *, device: str = "cpu", **kw: Any) -> LocalEmbedder:
    """A sentence-transformers model saved in the folder `path` (`model.save(path)`, or a Hugging Face snapshot
    folder), on `device`. Other keywords go to `SentenceTransformer(...)` (e.g. `trust_remote_code=True`,
    `truncate_dim=256`); `local_files_only=True` is always passed, so nothing is downloaded."""
    folder = _folder(path, "sentence_transformers_embedder")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise _need("sentence-transformers", "sentence-transformers") from exc
    model = SentenceTransformer(folder, device=device, **{**kw, "local_files_only": True})

    def encode(texts: list[str]) -> Any:
        return model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)

    return LocalEmbedder(f"sentence-transformers:{folder}", model, encode)


def fastembed_embedder(
    path_or_name: str | os.PathLike[str], *, model_name: str | None = None, cache_dir: str | None = None, **kw: Any
) -> LocalEmbedder:
    """A fastembed text model, from local files only. `path_or_name` is either a folder holding the model's ONNX
    files (then `model_name` names which fastembed model they are, e.g. "BAAI/bge-small-en-v1.5", for its pooling
    and file names), or a fastembed model name already in `cache_dir` (fastembed's cache, e.g. from an earlier
    download on a build machine). Other keywords go to `TextEmbedding(...)` (e.g. `threads=1`)."""
    given = os.fspath(path_or_name)
    if os.path.isdir(given):
        if not model_name:
            raise ValueError(
                f"fastembed_embedder({given!r}): a model folder needs model_name=..., the fastembed model its files "
                f"are (e.g. model_name='BAAI/bge-small-en-v1.5')"
            )
        options: dict[str, Any] = {"model_name": model_name, "specific_model_path": given}
    else:
        if os.path.isabs(given) or given.startswith((".", "~")):
            _folder(given, "fastembed_embedder")  # a path, not a model name: say it is missing
        options = {"model_name": given}
    if cache_dir is not None:
        options["cache_dir"] = cache_dir
    try:
        from fastembed import TextEmbedding
    except ImportError as exc:
        raise _need("fastembed", "fastembed") from exc
    model = TextEmbedding(**{**kw, **options, "local_files_only": True})

    def encode(texts: list[str]) -> Any:
        return list(model.embed(texts))

    return LocalEmbedder(
        f"fastembed:{options['model_name']}@{options.get('specific_model_path', 'cache')}", model, encode
    )
