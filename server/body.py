"""Reading request bodies within limits: size (413), media type (415), content encoding."""

from __future__ import annotations

import zlib

from fastapi import Request

from server.errors import BodyTooLarge, InvalidRequest, UnsupportedMediaType


def require_media_type(request: Request, allowed: tuple[str, ...]) -> str | None:
    """The request's media type, if it is one of ``allowed`` (``+json`` suffixes count as JSON); a
    request without Content-Type is taken as the first allowed type (curl, simple clients)."""
    header = request.headers.get("content-type")
    if header is None:
        return None
    media = header.split(";", 1)[0].strip().lower()
    if media in allowed or ("application/json" in allowed and media.endswith("+json")):
        return media
    raise UnsupportedMediaType(f"Content-Type must be {' or '.join(allowed)}, got {media!r}", "Content-Type")


def _too_large(size: int | str, limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"request body of {size} bytes is over the limit of {limit} bytes (the server's --max-body-bytes, "
        "PSN_MAX_BODY_BYTES); or send the tensor as binary data, 4 bytes a float32 instead of about 10 in "
        "JSON: POST /v2/models/{name}/infer with the binary tensor extension (binary_data_size)"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) one over ``limit`` bytes before or while reading it; a gzip or
    deflate Content-Encoding is undone, the limit applying to the decoded body too."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidRequest(f"bad Content-Length {length!r}", "Content-Length")
        if int(length) > limit:
            raise _too_large(length, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(f"more than {limit}", limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported", "Content-Encoding")
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        decoded = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"body is not valid {encoding} data ({exc})", "Content-Encoding") from None
    if len(decoded) > limit or decoder.unconsumed_tail:
        raise _too_large(f"more than {limit} (decoded)", limit)
    return decoded
