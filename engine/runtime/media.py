"""Audio and document token costs: an `input_audio` part's base64 bytes (and format) or a `file` part's PDF bytes,
and a provider kind in; the seconds of audio or pages of document they hold, and the input tokens that provider
kind bills for them, out.

Only the bytes the request carries are read; nothing is fetched (a `file_id` names a file stored at OpenAI, whose
size the gateway cannot see: it counts as UNKNOWN_PAGES pages). The estimates, per provider kind:

audio      seconds x AUDIO_TOKENS_PER_SECOND. Gemini: 32 tokens per second (its token guide). OpenAI publishes no
           per-second rate for chat-completions audio input; 10 per second (one token per 100 ms of speech, the
           rule of thumb for its audio models) is used. Anthropic has no audio input (a request with audio never
           goes there: the `audio` feature); it takes the larger rate. Seconds come from the WAV header's byte
           rate, or the first MP3 frame's bitrate, and the decoded size; an unreadable header counts at the
           lowest rate common for speech (WAV 8,000 bytes/s, MP3 32 kbit/s), so at the most seconds.
documents  pages x PAGE_TOKENS. Anthropic sends each page as its extracted text (1,500-3,000 tokens per page in
           its PDF guide) plus the page's image; OpenAI likewise sends the text and an image of each page: both
           are held at 3,000 a page. Gemini bills a page as an image: 258 tokens (Gemini 2.x), 560 at Gemini 3's
           default media resolution, the figure used. Pages are the PDF's page objects (also those inside
           compressed object streams); a PDF where none can be found counts one page per BYTES_PER_PAGE bytes.

Unknown kinds (decide(), which does not know the provider yet) take the largest of the three.
"""

from __future__ import annotations

import binascii
import functools
import math
import re
import struct
import zlib

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "BYTES_PER_PAGE",
    "MEDIA_KINDS",
    "PAGE_TOKENS",
    "UNKNOWN_PAGES",
    "Media",
    "audio_seconds",
    "decoded_size",
    "document_pages",
    "media_tokens",
]

MEDIA_KINDS = ("openai", "anthropic", "gemini")
AUDIO_TOKENS_PER_SECOND = {"openai": 10, "anthropic": 32, "gemini": 32}
PAGE_TOKENS = {"openai": 3000, "anthropic": 3000, "gemini": 560}
#: pages of a document whose bytes the request does not carry (a `file_id`)
UNKNOWN_PAGES = 10
#: bytes per page of a PDF whose page objects cannot be found (about a text page with a figure)
BYTES_PER_PAGE = 50_000
#: the lowest byte rates common for speech, for a header that cannot be read (the most seconds)
WAV_FALLBACK_BYTES_PER_SECOND = 8000  # 8 kHz, 8-bit, mono
MP3_FALLBACK_BITS_PER_SECOND = 32_000
#: decompressed bytes read from a PDF's object streams at most (a bound against compression bombs)
_MAX_INFLATED = 16 << 20

#: ("audio", seconds) or ("pages", pages): what one audio or document part holds
Media = tuple[str, float]

_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_OBJSTM = re.compile(rb"/Type\s*/ObjStm(?![A-Za-z])")
_STREAM = re.compile(rb"stream\r?\n")
# MPEG audio layer III bitrates (kbit/s) by bitrate index: MPEG-1, and MPEG-2 / 2.5
_MP3_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def decoded_size(payload: str) -> int:
    """The number of bytes base64 `payload` decodes to (whitespace ignored; not validated)."""
    n = len(payload) - sum(payload.count(c) for c in " \t\r\n")
    tail = payload.rstrip()
    return max(0, n * 3 // 4 - min(2, len(tail) - len(tail.rstrip("="))))


def _decode_at(payload: str, offset: int, size: int) -> bytes:
    """`size` decoded bytes from byte `offset` of base64 `payload` (fewer near its end; b"" when not base64)."""
    start = offset // 3 * 4
    chars = payload[start : start + (size // 3 + 2) * 4]
    chars = chars[: len(chars) - len(chars) % 4]
    try:
        data = binascii.a2b_base64(chars)
    except (binascii.Error, ValueError):
        return b""
    return data[offset % 3 : offset % 3 + size]


def _wav_byte_rate(head: bytes) -> int | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    i = 12
    while i + 8 <= len(head):
        chunk, length = head[i : i + 4], struct.unpack("<I", head[i + 4 : i + 8])[0]
        if chunk == b"fmt " and i + 16 <= len(head):
            (rate,) = struct.unpack("<I", head[i + 16 : i + 20]) if i + 20 <= len(head) else (0,)
            return rate or None
        i += 8 + length + (length & 1)
    return None


def _mp3_bit_rate(payload: str) -> int | None:
    head = _decode_at(payload, 0, 10)
    start = 0
    if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag: its size is four 7-bit bytes
        start = 10 + sum((b & 0x7F) << (7 * (3 - k)) for k, b in enumerate(head[6:10]))
    frame = _decode_at(payload, start, 4)
    if len(frame) < 3 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0 or (frame[1] >> 1) & 3 != 1:
        return None
    version, index = (frame[1] >> 3) & 3, frame[2] >> 4
    if version == 1 or index in (0, 15):
        return None
    return (_MP3_V1 if version == 3 else _MP3_V2)[index] * 1000


def audio_seconds(payload: str, fmt: str) -> float:
    """The seconds of audio base64 `payload` (a WAV or MP3 file, by `fmt`) holds, read from its header and size;
    at the lowest common byte rate when the header cannot be read."""
    size = decoded_size(payload)
    if fmt == "mp3":
        bits = _mp3_bit_rate(payload) or MP3_FALLBACK_BITS_PER_SECOND
        return size * 8 / bits
    rate = _wav_byte_rate(_decode_at(payload, 0, 256)) or WAV_FALLBACK_BYTES_PER_SECOND
    return max(0, size - 44) / rate


def _inflated_pages(pdf: bytes) -> int:
    """Page objects inside a PDF's compressed object streams (PDF 1.5+ may keep every page there)."""
    pages, budget = 0, _MAX_INFLATED
    for match in _OBJSTM.finditer(pdf):
        stream = _STREAM.search(pdf, match.end())
        if stream is None or budget <= 0:
            break
        end = pdf.find(b"endstream", stream.end())
        try:
            text = zlib.decompressobj().decompress(pdf[stream.end() : end if end >= 0 else None], budget)
        except zlib.error:
            continue
        budget -= len(text)
        pages += len(_PAGE.findall(text))
    return pages


@functools.lru_cache(maxsize=8)
def document_pages(payload: str) -> int:
    """The pages of the PDF base64 `payload` holds: its page objects, or one per BYTES_PER_PAGE bytes (at least one)
    when none can be found (not a PDF, or not one this reader can see into)."""
    try:
        pdf = binascii.a2b_base64(payload)  # not strict: whitespace (and any stray character) is skipped
    except (binascii.Error, ValueError):
        pdf = b""
    pages = len(_PAGE.findall(pdf)) or _inflated_pages(pdf)
    return pages or max(1, math.ceil(decoded_size(payload) / BYTES_PER_PAGE))


def media_tokens(media: Media, kind: str | None) -> int:
    """The input tokens of one audio or document part on a provider of `kind` (None or an unknown kind: the largest
    over every kind)."""
    what, amount = media
    rates = AUDIO_TOKENS_PER_SECOND if what == "audio" else PAGE_TOKENS
    rate = rates.get(kind or "")
    if rate is None:
        rate = max(rates.values())
    return math.ceil(amount * rate)
