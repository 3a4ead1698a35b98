"""Reading corpus files: decompression, ``corpus.encoding``, line ends, a wrong-encoding stop.

Files are decoded in the reading process with ``corpus.encoding`` (a Python
codec; ``utf-8`` skips a leading byte-order mark). Bytes that are invalid in
that encoding become :data:`INVALID` marks, so the line can be counted and then
repaired or dropped (``segment.invalid_utf8``). Lines end at LF, CRLF or a
lone CR (old Mac files; counted as ``lines_ending_cr``), never at other
Unicode line separators.

When more than ``corpus.max_invalid_fraction`` of a file's lines are invalid,
the file is in another encoding (a GBK file read as UTF-8 would otherwise be
"repaired" into mojibake): :class:`CorpusError` names the file, the share,
the encoding it most likely is and the fix.
"""

from __future__ import annotations

import codecs
import io
import logging
import lzma
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from elmo_pipeline.common import open_binary
from elmo_pipeline.segment.stats import SegmentStats
from elmo_pipeline.text.settings import CorpusSettings

log = logging.getLogger(__name__)

#: A chunk sent to a worker ends after this many lines or characters, whichever comes first.
#: Chunks are also the blocks dealt round-robin to the jobs of a sharded run.
CHUNK_LINES = 2000
CHUNK_CHARS = 1 << 20

#: Stands for bytes that are invalid in corpus.encoding: a lone surrogate, which no
#: successful decode produces, so it cannot be mistaken for a character of the text.
INVALID = "\udcff"
_ERRORS = "elmo-pipeline-mark-invalid"
#: A file whose first lines are mostly invalid stops here, without reading the rest.
EARLY_CHECK_LINES = 1000
#: Bytes looked at to guess a file's real encoding.
SAMPLE_BYTES = 1 << 16


class CorpusError(ValueError):
    """A corpus file that cannot be read as configured; the message names the file."""


def _mark_invalid(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return INVALID, error.end


codecs.register_error(_ERRORS, _mark_invalid)


def codec_name(encoding: str) -> str:
    """Python's name of ``encoding``, with ``utf-8-sig`` as ``utf-8`` (a BOM is dropped anyway)."""
    name = codecs.lookup(encoding).name
    return "utf-8" if name == "utf-8-sig" else name


def python_codec(encoding: str) -> str:
    """The codec to decode ``encoding`` with: UTF-8 drops a leading byte-order mark."""
    name = codec_name(encoding)
    return "utf-8-sig" if name == "utf-8" else name


def _read_error(path: Path, err: BaseException) -> CorpusError:
    """A one-line message for a file that cannot be decompressed or read."""
    cause = str(err) or type(err).__name__
    if isinstance(err, EOFError):
        cause = f"the compressed file is truncated ({cause})"
    elif isinstance(err, lzma.LZMAError | zlib.error) or "Not a gzipped file" in cause:
        cause = f"the compressed file is damaged ({cause})"
    return CorpusError(f"corpus file {os.fspath(path)!r} cannot be read: {cause}")


def read_sample(path: Path, size: int = SAMPLE_BYTES) -> bytes:
    """The first ``size`` (decompressed) bytes of a file."""
    try:
        with open_binary(path) as handle:
            return handle.read(size)
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as err:
        raise _read_error(path, err) from None


def _decodes(sample: bytes, encoding: str) -> bool:
    """True when ``sample`` is valid in ``encoding`` (a character cut at the end is fine)."""
    try:
        codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _utf16_without_bom(sample: bytes) -> tuple[str, str] | None:
    """UTF-16 without a byte-order mark: NUL bytes, or line ends, in every other position.

    Latin text in UTF-16 has a NUL in every other byte; Chinese text has few
    NULs, but its line ends are the two bytes of U+000A at an even offset and
    the sample decodes cleanly (random bytes soon make an invalid surrogate).
    """
    even = sample[: len(sample) - len(sample) % 2]
    half = len(even) // 2
    nul_even, nul_odd = even[0::2].count(0), even[1::2].count(0)
    for codec, nuls, other, order in (
        ("utf-16-le", nul_odd, nul_even, "little"),
        ("utf-16-be", nul_even, nul_odd, "big"),
    ):
        if not half or not _decodes(even, codec):
            continue
        if nuls > 0.2 * half and nuls > 4 * other:
            return codec, f"every other byte is NUL (UTF-16 {order}-endian without a BOM)"
        if "\n" in even.decode(codec):
            return codec, f"it decodes cleanly as UTF-16 {order}-endian, line ends included"
    return None


def guess_encoding(sample: bytes) -> tuple[str, str] | None:
    """(codec, reason) for the encoding ``sample`` most likely is, or None."""
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32", "it starts with a UTF-32 byte-order mark"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", "it starts with a UTF-16 byte-order mark"
    utf16 = _utf16_without_bom(sample)
    if utf16 is not None:
        return utf16
    if _decodes(sample, "utf-8"):
        return "utf-8", "it decodes cleanly as UTF-8"
    if _decodes(sample, "gb18030"):
        big5 = _decodes(sample, "big5")
        note = " (it also decodes as Big5: try big5 if the result looks wrong)" if big5 else ""
        return "gb18030", f"it decodes cleanly as GB18030, which includes GBK{note}"
    if _decodes(sample, "big5"):
        return "big5", "it decodes cleanly as Big5"
    return None


def wrong_encoding_message(
    path: Path, n_invalid: int, n_lines: int, corpus: CorpusSettings, early: bool
) -> str:
    """The one-line message for a file in another encoding than corpus.encoding."""
    share = n_invalid / n_lines
    scope = f"of the first {n_lines} lines" if early else f"of {n_lines} lines"
    message = (
        f"corpus file {os.fspath(path)!r}: {n_invalid} {scope} ({share:.1%}) are not valid "
        f"{corpus.encoding} (corpus.max_invalid_fraction is {corpus.max_invalid_fraction:g})"
    )
    guess = guess_encoding(read_sample(path))
    if guess is not None and codec_name(guess[0]) == codec_name(corpus.encoding):
        return (
            f"{message}; its first {SAMPLE_BYTES // 1024} KiB are valid {corpus.encoding}, so "
            f"the bad lines come later: `iconv -f {corpus.encoding} -t UTF-8 {path.name} "
            "> /dev/null` names the first bad position (decompress it first if need be); "
            "or raise corpus.max_invalid_fraction to repair or drop the bad lines"
        )
    if guess is None:
        return (
            f"{message}; its encoding is not recognised: convert it to UTF-8 with iconv, "
            "or raise corpus.max_invalid_fraction to repair or drop the bad lines"
        )
    codec, reason = guess
    return (
        f"{message}; it looks like {codec} ({reason}): set `corpus.encoding: {codec}`, or "
        f"convert it with `{_iconv_command(path, codec)}`"
    )


def _iconv_command(path: Path, codec: str) -> str:
    """A shell command converting ``path`` to UTF-8 (decompressing it first if need be)."""
    cat = {".gz": "zcat", ".xz": "xzcat", ".bz2": "bzcat"}.get(path.suffix.lower())
    iconv = f"iconv -f {codec.upper()} -t UTF-8"
    if cat is None:
        return f"{iconv} {path.name} > {path.stem}.utf8.txt"
    stem = Path(path.stem).stem
    return f"{cat} {path.name} | {iconv} > {stem}.utf8.txt"


def check_declared_encoding(path: Path, corpus: CorpusSettings) -> None:
    """Stop when a file that is valid UTF-8 is declared another ASCII-based encoding.

    Read as GB18030, UTF-8 Chinese text decodes into valid mojibake that no
    invalid-line count would catch, so the mismatch is checked up front.
    """
    if codec_name(corpus.encoding) == "utf-8":
        return
    sample = read_sample(path)
    if not any(byte >= 0x80 for byte in sample) or not _decodes(sample, "utf-8"):
        return
    if "\n".encode(corpus.encoding) != b"\n":
        return  # UTF-16/32 text is never valid UTF-8 with non-ASCII bytes; no confusion
    raise CorpusError(
        f"corpus file {os.fspath(path)!r} is valid UTF-8 but corpus.encoding is "
        f"{corpus.encoding!r}: set `corpus.encoding: utf-8` (or convert the file)"
    )


class _FileCounts:
    """Lines and invalid lines of one file, checked against corpus.max_invalid_fraction."""

    def __init__(self, path: Path, corpus: CorpusSettings) -> None:
        self.path, self.corpus = path, corpus
        self.lines = self.invalid = self.ending_cr = 0

    def count(self, invalid: bool) -> None:
        self.lines += 1
        self.invalid += invalid
        if self.lines == EARLY_CHECK_LINES and 2 * self.invalid > self.lines:
            self.check(early=True)

    def check(self, early: bool = False) -> None:
        if self.lines and self.invalid > self.corpus.max_invalid_fraction * self.lines:
            raise CorpusError(
                wrong_encoding_message(self.path, self.invalid, self.lines, self.corpus, early)
            )


def _strip_line_end(line: str, counts: _FileCounts) -> str:
    if line.endswith("\n"):
        return line[:-2] if line.endswith("\r\n") else line[:-1]
    if line.endswith("\r"):
        counts.ending_cr += 1
        return line[:-1]
    return line


def read_lines(path: Path, corpus: CorpusSettings, stats: SegmentStats) -> Iterator[str]:
    """The lines of one file, decoded, without their line ends; bad bytes are INVALID marks.

    Counts lines, invalid lines and CR-only line ends in ``stats``; raises
    :class:`CorpusError` for a file that cannot be read or is in another encoding.
    """
    check_declared_encoding(path, corpus)
    counts = _FileCounts(path, corpus)
    try:
        with (
            open_binary(path) as raw,
            io.TextIOWrapper(
                raw, encoding=python_codec(corpus.encoding), errors=_ERRORS, newline=""
            ) as text,
        ):
            for line in text:
                line = _strip_line_end(line, counts)
                counts.count(INVALID in line)
                yield line
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as err:
        raise _read_error(path, err) from None
    finally:
        stats.lines_read += counts.lines
        stats.lines_invalid_utf8 += counts.invalid
        stats.lines_ending_cr += counts.ending_cr
    counts.check()
    if counts.ending_cr:
        log.warning(
            "%s: %d line(s) end in a lone CR (old Mac line ends); they were split there",
            path,
            counts.ending_cr,
        )


def iter_line_chunks(
    files: list[Path], corpus: CorpusSettings, stats: SegmentStats
) -> Iterator[list[str]]:
    """Lines of all files in order, in chunks of <= CHUNK_LINES lines / ~CHUNK_CHARS characters.

    Chunk boundaries depend on the input only, never on threads or jobs.
    """
    chunk: list[str] = []
    size = 0
    for path in files:
        log.info("reading %s", path)
        for line in read_lines(path, corpus, stats):
            chunk.append(line)
            size += len(line)
            if len(chunk) >= CHUNK_LINES or size >= CHUNK_CHARS:
                yield chunk
                chunk, size = [], 0
        stats.files_read += 1
    if chunk:
        yield chunk
