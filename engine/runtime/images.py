"""Image token costs: an image (a `data:` URL, or base64 data with its MIME type, or a remote URL) and a provider
kind in, the input tokens that provider bills for it out.

Sizes are read only from the image bytes the request carries (the PNG, GIF, WebP or JPEG header decoded from a
prefix of the base64 text); a remote URL is never fetched. An image whose size cannot be read costs its
provider's worst case. The rules, from each provider's published vision documentation:

openai     detail "high": scaled to fit 2048x2048, then its short side to 768 px (down only); 85 tokens plus
           170 per 512-px tile. Worst case 85 + 8 x 170 = 1445 (a 768x2048 image). OpenAI's own vision guide
           ("calculating costs"). Mini models bill images at more tokens for the same dollars (gpt-4o-mini:
           2833 per tile): held at the formula, they are under-held (docs/execution.md says so).
anthropic  width x height / 750 tokens, after scaling the long edge to at most 1568 px; an image over about
           1600 tokens is scaled down first, so 1600 is the worst case (Anthropic's vision guide, "calculate
           image costs"; 1092x1092 is ~1590 tokens).
gemini     258 tokens when both sides are at most 384 px, else 258 per 768x768 tile (Gemini 2.x token guide);
           at least 1120, what Gemini 3 bills an image at its default (high) media resolution, which is also the
           worst case when the size is unknown.

Unknown kinds (decide(), which does not know the provider yet) take the largest of the three.
"""

from __future__ import annotations

import binascii
import math
import struct

__all__ = ["IMAGE_KINDS", "WORST_CASE", "image_size", "image_tokens", "parse_data_url"]

IMAGE_KINDS = ("openai", "anthropic", "gemini")
#: tokens of an image whose size is unknown, per provider kind (see the module docstring)
WORST_CASE = {"openai": 85 + 8 * 170, "anthropic": 1600, "gemini": 1120}
#: base64 characters decoded to find a header (a JPEG's SOF may follow EXIF and ICC segments of 64 KiB each)
_PREFIX_CHARS = 4 * 65536


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(mime type, base64 payload) of a `data:<mime>;base64,<payload>` URL, or None for anything else."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[5:].split(";", 1)[0], payload


def _decode_prefix(payload: str) -> bytes:
    text = "".join(payload[:_PREFIX_CHARS].split())
    text = text[: len(text) - len(text) % 4]
    try:
        return binascii.a2b_base64(text)
    except (binascii.Error, ValueError):
        return b""


def _png(b: bytes) -> tuple[int, int] | None:
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR" and len(b) >= 24:
        return struct.unpack(">II", b[16:24])
    return None


def _gif(b: bytes) -> tuple[int, int] | None:
    if b[:6] in (b"GIF87a", b"GIF89a") and len(b) >= 10:
        return struct.unpack("<HH", b[6:10])
    return None


def _webp(b: bytes) -> tuple[int, int] | None:
    if b[:4] != b"RIFF" or b[8:12] != b"WEBP" or len(b) < 30:
        return None
    chunk = b[12:16]
    if chunk == b"VP8 " and b[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and b[20] == 0x2F:
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    return None


def _jpeg(b: bytes) -> tuple[int, int] | None:
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            if i + 9 > len(b):
                return None
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def image_size(url: str | None = None, data: str | None = None) -> tuple[int, int] | None:
    """(width, height) read from a `data:` URL or base64 `data`; None when not readable (never fetches a URL)."""
    payload = data
    if payload is None and url is not None:
        parsed = parse_data_url(url)
        payload = parsed[1] if parsed is not None else None
    if not payload:
        return None
    head = _decode_prefix(payload)
    for read in (_png, _jpeg, _gif, _webp):
        size = read(head)
        if size is not None:
            w, h = size
            return (w, h) if w > 0 and h > 0 else None
    return None


def _openai(w: int, h: int) -> int:
    fit = min(1.0, 2048 / max(w, h))
    short = min(1.0, 768 / (min(w, h) * fit))
    scale = fit * short
    return 85 + 170 * math.ceil(w * scale / 512) * math.ceil(h * scale / 512)


def _anthropic(w: int, h: int) -> int:
    scale = min(1.0, 1568 / max(w, h))
    return min(WORST_CASE["anthropic"], math.ceil(w * scale * h * scale / 750))


def _gemini(w: int, h: int) -> int:
    tiles = 1 if w <= 384 and h <= 384 else math.ceil(w / 768) * math.ceil(h / 768)
    return max(WORST_CASE["gemini"], 258 * tiles)


_RULES = {"openai": _openai, "anthropic": _anthropic, "gemini": _gemini}


def image_tokens(size: tuple[int, int] | None, kind: str | None) -> int:
    """The input tokens of one image of `size` (None: unknown) on a provider of `kind` (None or an unknown kind:
    the largest over every kind)."""
    rule = _RULES.get(kind or "")
    if rule is None:
        return max(image_tokens(size, k) for k in IMAGE_KINDS)
    if size is None:
        return WORST_CASE[kind or ""]
    return rule(*size)
