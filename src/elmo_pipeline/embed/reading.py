"""Reading embeddings back: a part file, a single output file or a whole dataset directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def read_embeddings(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a part file, a single output file, or the whole ``part-*.parquet`` directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("part-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no part-*.parquet files in {path}")
        return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
    return pq.read_table(path, columns=columns)


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectors of one output column as ``(matrix [n, d], offsets)`` without copying the floats.

    For a per-token output, ``matrix`` holds every token's vector in row order and the
    tokens of row r are ``matrix[offsets[r]:offsets[r + 1]]``; for ``default`` offsets is
    None and row r is ``matrix[r]``. A column read in several chunks is combined first
    (one copy); read a single part or row group for a pure view.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = None
    if pa.types.is_list(array.type):
        offsets = np.asarray(array.offsets) - array.offsets[0].as_py()
        array = array.flatten()
    dim = array.type.list_size
    values = array.flatten().to_numpy(zero_copy_only=True)
    return values.reshape(-1, dim), offsets
