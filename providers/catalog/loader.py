"""Catalog file loading: a catalog file's path in, its checked, immutable `Catalog` out (kept by file name and
content digest, so an unchanged file loads to the same object), or a `CatalogError` for a file that is missing, is
a directory, cannot be read or is not UTF-8, with a did-you-mean for a near miss.

The YAML checks are `providers.catalog.yaml_reader.read_catalog()`'s; the format is described in
`providers.catalog.models`.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from providers.catalog.files import LARGE_FILE_BYTES, read_regular
from providers.catalog.issues import CatalogError, CatalogIssue
from providers.catalog.memo import Lru

if TYPE_CHECKING:  # models imports this module (default_catalog): the type only
    from providers.catalog.models import Catalog

__all__ = ["LOADED", "load_catalog"]


# ---- loading ---------------------------------------------------------------------------------------------


def load_catalog(path: str | Path) -> Catalog:
    """Load and check a catalog file; raises CatalogError listing every problem (also for a missing file)."""
    file = str(path)
    target = Path(path)
    try:
        raw = read_regular(target, LARGE_FILE_BYTES)  # a regular file only, never a FIFO or a device
    except FileNotFoundError:
        raise CatalogError(
            [CatalogIssue(file, 0, 0, "", "catalog file not found", _missing_file_hint(target))]
        ) from None
    except IsADirectoryError:
        raise CatalogError(
            [CatalogIssue(file, 0, 0, "", "expected a catalog file, got a directory", _directory_hint(target))]
        ) from None
    except OSError as exc:
        raise CatalogError(
            [CatalogIssue(file, 0, 0, "", f"cannot read the catalog: {exc.strerror or exc}", None)]
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CatalogError(
            [
                CatalogIssue(
                    file,
                    line,
                    col,
                    "",
                    f"the catalog is not UTF-8 text (byte 0x{raw[exc.start]:02x})",
                    "save the file as UTF-8",
                )
            ]
        ) from None
    from providers.catalog.yaml_reader import read_catalog  # imports this module (via models): load it on first use

    # raises CatalogError: a broken catalog is never kept
    return LOADED.get((file, hashlib.sha256(raw).digest()), lambda: read_catalog(file, text))


#: Catalogs kept by file name and the digest of their content (both loaders): a reload reads an unchanged catalog
#: file again and gets the same immutable Catalog back, so the compiler's memos keyed by the catalog
#: (engine/compiler/reuse.py) hit too.
LOADED: Lru[Catalog] = Lru(8)


def _missing_file_hint(path: Path) -> str | None:
    folder = path.parent
    if not folder.is_dir():
        return f"the folder `{folder}` does not exist either"
    candidates = {p.stem: p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml")}
    close = difflib.get_close_matches(path.stem, candidates, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{folder / candidates[close[0]]}`?"
    return None


def _directory_hint(path: Path) -> str | None:
    names = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    return f"pick a file in it, e.g. `{path / names[0]}`" if names else None
