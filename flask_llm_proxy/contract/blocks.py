"""Content blocks of the neutral request: text, tool calls and results, thinking, and attachments.

Attachments (images and PDF documents) are accepted in Anthropic's shape (``image`` /
``document`` with a ``source``) and in OpenAI's (``image_url``, ``file``), and held in one shape:
``{"type": "image" | "document", "source": {"type": "base64", "media_type", "data"} | {"type":
"url", "url"} | {"type": "text", "media_type": "text/plain", "data"}, ...}``. A data URL always
becomes a base64 source, so each provider module writes its own form from one input.

Checked here, for every provider: the shape, the media type against the file's first bytes, and
the host's limits (which kinds, how large). What one upstream API takes on top (its size limits,
its sources) is :class:`AttachmentLimits`, checked by the provider modules.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _json
from .values import boolean, cache_control, fail, only_keys, shown, string

#: every attachment kind; a provider's ``attachments`` option allows a subset
ATTACHMENT_KINDS = frozenset({"image", "document"})
#: the image types both Anthropic (https://docs.claude.com/en/docs/build-with-claude/vision) and
#: OpenAI (https://platform.openai.com/docs/guides/images-vision) take
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DOCUMENT_TYPES = ("application/pdf",)
MAX_URL_LEN = 8192
#: images cost about this many tokens at most on Anthropic (the documented estimate
#: width * height / 750 at the largest size before downscaling); the base of the estimate of a cut
#: stream's input, in characters (4 per token), so a base64 image is not counted as text
IMAGE_CHARS_ESTIMATE = 1600 * 4

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)


def sniff(data: str) -> str | None:
    """The media type the first bytes of base64 ``data`` say, or None. Only the head is decoded:
    a full decode of a large image would hold a gevent worker's other streams for milliseconds."""
    try:
        head = base64.b64decode(data[:24], validate=True)
    except (binascii.Error, ValueError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((mt for magic, mt in _MAGIC if head.startswith(magic)), None)


def decoded_size(data: str) -> int:
    return len(data) * 3 // 4 - data[-2:].count("=")


def size_text(n: int) -> str:
    if n < 10_000:
        return f"{n:,} bytes"
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"


@dataclass(frozen=True)
class Policy:
    """What the host allows on one provider: attachment kinds, and a size cap per attachment
    (decoded bytes, the file's own size; ``None``: only the upstream API's limits)."""

    kinds: frozenset[str] = ATTACHMENT_KINDS
    max_bytes: int | None = None


def _base64_source(media_type: Any, data: Any, path: str, kind: str, policy: Policy, *, data_url: bool = False) -> dict[str, Any]:
    """``path``: the source object, or the data URL string (``data_url``), which errors name whole."""
    allowed = IMAGE_TYPES if kind == "image" else DOCUMENT_TYPES
    mt_path, data_path = (path, path) if data_url else (f"{path}.media_type", f"{path}.data")
    mt = media_type.lower() if isinstance(media_type, str) else media_type
    if mt not in allowed:
        raise fail(mt_path, f"{shown(media_type)} is not a {kind} type the proxy takes; use one of {list(allowed)}")
    data = string(data, data_path, allow_empty=False)
    if data.startswith("data:"):
        raise fail(data_path, "must be the base64 text alone, without the 'data:...;base64,' prefix")
    if len(data) % 4:
        raise fail(data_path, "is not base64 (its length is not a multiple of 4; line breaks are not allowed)")
    found = sniff(data)
    if found != mt:
        what = f"{found} data" if found else "not data of a type the proxy knows"
        raise fail(data_path, f"is {what}, but its media type says {mt}")
    if policy.max_bytes is not None and decoded_size(data) > policy.max_bytes:
        raise fail(path, f"the {kind} is {size_text(decoded_size(data))}; this provider takes {kind}s up to {size_text(policy.max_bytes)}")
    return {"type": "base64", "media_type": mt, "data": data}


def url_source(url: Any, path: str, kind: str, policy: Policy) -> dict[str, Any]:
    """An http(s) URL the upstream fetches itself, or a data URL (then a base64 source)."""
    url = string(url, path, allow_empty=False)
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        if not comma or not head.endswith(";base64"):
            raise fail(path, "a data URL must be 'data:<media type>;base64,<data>'")
        return _base64_source(head[5:-7], data, path, kind, policy, data_url=True)
    if len(url) > MAX_URL_LEN or not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
        raise fail(path, f"must be an http(s) URL (at most {MAX_URL_LEN} characters, no spaces) or a base64 data URL")
    return {"type": "url", "url": url}


def _source(src: Any, path: str, kind: str, policy: Policy) -> dict[str, Any]:
    if not isinstance(src, Mapping):
        raise fail(path, "must be an object with a 'type': 'base64' or 'url'" + (" or 'text'" if kind == "document" else ""))
    t = src.get("type")
    if t == "base64":
        only_keys(src, path, ("type", "media_type", "data"))
        return _base64_source(src.get("media_type"), src.get("data"), path, kind, policy)
    if t == "url":
        only_keys(src, path, ("type", "url"))
        return url_source(src.get("url"), f"{path}.url", kind, policy)
    if t == "text" and kind == "document":
        only_keys(src, path, ("type", "media_type", "data"))
        if src.get("media_type", "text/plain") != "text/plain":
            raise fail(f"{path}.media_type", "a text source is 'text/plain'")
        return {"type": "text", "media_type": "text/plain", "data": string(src.get("data"), f"{path}.data", allow_empty=False)}
    kinds = "'base64', 'url' or 'text'" if kind == "document" else "'base64' or 'url'"
    raise fail(f"{path}.type", f"must be {kinds}, got {shown(t)}")


def _attachment(b: Mapping[str, Any], path: str, role: str, policy: Policy) -> dict[str, Any]:
    t = b["type"]
    kind = "image" if t in ("image", "image_url") else "document"
    if role != "user":
        raise fail(path, f"{kind} blocks belong to user messages")
    if kind not in policy.kinds:
        raise fail(path, f"this provider takes no {kind} attachments (the host turned them off)")
    out: dict[str, Any]
    if t == "image":
        only_keys(b, path, ("type", "source", "detail", "cache_control"))
        out = {"type": "image", "source": _source(b.get("source"), f"{path}.source", kind, policy)}
    elif t == "image_url":
        only_keys(b, path, ("type", "image_url", "cache_control"))
        spec = b.get("image_url")
        if isinstance(spec, str):
            spec = {"url": spec}
        if not isinstance(spec, Mapping):
            raise fail(f"{path}.image_url", 'must be {"url": ...} or a URL string')
        only_keys(spec, f"{path}.image_url", ("url", "detail"))
        out = {"type": "image", "source": url_source(spec.get("url"), f"{path}.image_url.url", kind, policy)}
        if spec.get("detail") is not None:
            out["detail"] = spec["detail"]
    elif t == "document":
        only_keys(b, path, ("type", "source", "title", "context", "citations", "cache_control"))
        out = {"type": "document", "source": _source(b.get("source"), f"{path}.source", kind, policy)}
        for name in ("title", "context"):
            if b.get(name) is not None:
                out[name] = string(b[name], f"{path}.{name}", max_len=10_000)
        if b.get("citations") is not None:
            cit = b["citations"]
            if not isinstance(cit, Mapping):
                raise fail(f"{path}.citations", 'must be {"enabled": true or false}')
            only_keys(cit, f"{path}.citations", ("enabled",))
            out["citations"] = {"enabled": boolean(cit.get("enabled"), f"{path}.citations.enabled")}
    else:  # OpenAI's {"type": "file", "file": {"filename", "file_data"}}
        only_keys(b, path, ("type", "file", "cache_control"))
        spec = b.get("file")
        if not isinstance(spec, Mapping):
            raise fail(f"{path}.file", 'must be {"filename": ..., "file_data": "data:application/pdf;base64,..."}')
        if "file_id" in spec:  # the files of the proxy's API key: another user's upload could be named
            raise fail(
                f"{path}.file.file_id", "uploaded-file references are not accepted (the API key is shared by all users); send file_data"
            )
        only_keys(spec, f"{path}.file", ("filename", "file_data"))
        out = {"type": "document", "source": url_source(spec.get("file_data"), f"{path}.file.file_data", kind, policy)}
        if out["source"]["type"] != "base64":
            raise fail(f"{path}.file.file_data", "must be a data URL 'data:application/pdf;base64,...'")
        if spec.get("filename") is not None:
            out["filename"] = string(spec["filename"], f"{path}.file.filename", allow_empty=False, max_len=255)
    if t == "image" and b.get("detail") is not None:
        out["detail"] = b["detail"]
    if "detail" in out and out["detail"] not in ("auto", "low", "high"):
        raise fail(f"{path}.detail", "must be 'auto', 'low' or 'high'")
    if "cache_control" in b:
        out["cache_control"] = cache_control(b["cache_control"], f"{path}.cache_control")
    return out


def _with_cache(out: dict[str, Any], b: Mapping[str, Any], path: str) -> dict[str, Any]:
    if "cache_control" in b:
        out["cache_control"] = cache_control(b["cache_control"], f"{path}.cache_control")
    return out


def parse_block(b: Any, path: str, role: str, policy: Policy) -> dict[str, Any]:
    if not isinstance(b, Mapping):
        raise fail(path, "must be an object with a 'type'")
    t = b.get("type")
    if t == "text":
        only_keys(b, path, ("type", "text", "cache_control"))
        return _with_cache({"type": "text", "text": string(b.get("text"), f"{path}.text", allow_empty=False)}, b, path)
    if t in ("image", "image_url", "document", "file"):
        return _attachment(b, path, role, policy)
    if t == "tool_use":
        if role != "assistant":
            raise fail(path, "tool_use blocks belong to assistant messages")
        only_keys(b, path, ("type", "id", "name", "arguments", "input", "cache_control"))
        args = b.get("arguments", b.get("input", {}))
        if not isinstance(args, Mapping):
            raise fail(f"{path}.arguments", "must be an object")
        return _with_cache(
            {
                "type": "tool_use",
                "id": string(b.get("id"), f"{path}.id", allow_empty=False, max_len=256),
                "name": string(b.get("name"), f"{path}.name", allow_empty=False, max_len=256),
                "arguments": dict(args),
            },
            b,
            path,
        )
    if t == "tool_result":
        if role != "user":
            raise fail(path, "tool_result blocks belong to user messages")
        only_keys(b, path, ("type", "tool_use_id", "result", "content", "is_error", "cache_control"))
        result = b.get("result", b.get("content", ""))
        if not isinstance(result, str):
            result = _json.dumps_str(result)  # JSON has no type dumps cannot write
        return _with_cache(
            {
                "type": "tool_result",
                "tool_use_id": string(b.get("tool_use_id"), f"{path}.tool_use_id", allow_empty=False, max_len=256),
                "result": result,
                "is_error": boolean(b.get("is_error", False), f"{path}.is_error"),
            },
            b,
            path,
        )
    if t in ("thinking", "redacted_thinking"):
        # Anthropic asks for the thinking blocks of an assistant turn back unchanged when it used
        # tools (https://docs.claude.com/en/docs/build-with-claude/extended-thinking)
        if role != "assistant":
            raise fail(path, f"{t} blocks belong to assistant messages")
        if t == "thinking":
            only_keys(b, path, ("type", "thinking", "signature"))
            return {
                "type": "thinking",
                "thinking": string(b.get("thinking"), f"{path}.thinking"),
                "signature": string(b.get("signature"), f"{path}.signature", allow_empty=False),
            }
        only_keys(b, path, ("type", "data"))
        return {"type": "redacted_thinking", "data": string(b.get("data"), f"{path}.data", allow_empty=False)}
    raise fail(
        f"{path}.type",
        "must be 'text', 'image', 'image_url', 'document', 'file', 'tool_use', 'tool_result', "
        f"'thinking' or 'redacted_thinking', got {shown(t)}",
    )


def content_chars(content: Any) -> int:
    """Characters of a message's content for the input estimate: text as is, an image as
    :data:`IMAGE_CHARS_ESTIMATE`, a document as its decoded size / 8 (a PDF page of ~2,000 tokens
    takes some 64 kB), never the base64 text itself."""
    if isinstance(content, str):
        return len(content)
    n = 0
    for b in content:
        t = b["type"]
        if t == "image":
            n += IMAGE_CHARS_ESTIMATE
        elif t == "document":
            src = b["source"]
            n += (
                len(src["data"])
                if src["type"] == "text"
                else decoded_size(src["data"]) // 8
                if src["type"] == "base64"
                else IMAGE_CHARS_ESTIMATE
            )
        else:
            n += len(str(b))
    return n


@dataclass(frozen=True)
class AttachmentLimits:
    """What one upstream API takes, from its public reference (cited where each is defined)."""

    api: str  #: its name in error messages
    image_data_chars: int  #: the longest base64 text of one image
    max_images: int
    document_sources: frozenset[str]  #: ``base64``, ``url``, ``text``
    document_data_chars: int


def attachments_of(messages: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(path, block)`` of every image and document of a parsed conversation."""
    for i, m in enumerate(messages):
        content = m["content"]
        if not isinstance(content, str):
            for j, b in enumerate(content):
                if b["type"] in ("image", "document"):
                    yield f"messages[{i}].content[{j}]", b


def check_limits(attachments: Iterable[tuple[str, dict[str, Any]]], limits: AttachmentLimits) -> None:
    """Refuse what the upstream API would refuse, naming the block, before calling it."""
    images = 0
    for path, b in attachments:
        t, src = b["type"], b["source"]
        if t == "image":
            images += 1
            if images > limits.max_images:
                raise fail(path, f"{limits.api} takes at most {limits.max_images} images per request")
            cap = limits.image_data_chars
        else:
            if src["type"] not in limits.document_sources:
                raise fail(
                    f"{path}.source",
                    f"{limits.api} takes documents as {' or '.join(sorted(limits.document_sources))}, not as {src['type']}",
                )
            cap = limits.document_data_chars
        if src["type"] != "url" and len(src["data"]) > cap:
            raise fail(path, f"the {t}'s base64 data is {size_text(len(src['data']))}; {limits.api} takes at most {size_text(cap)} per {t}")


#: the attachment block types of the provider-native bodies, by kind
_NATIVE_KINDS = {
    "image": "image",
    "image_url": "image",
    "input_image": "image",
    "document": "document",
    "file": "document",
    "input_file": "document",
}


def _native_data(b: Mapping[str, Any]) -> str | None:
    """The base64 text of a native attachment block, wherever its API puts it (None: a URL)."""
    src = b.get("source")
    if isinstance(src, Mapping):
        return src.get("data") if src.get("type") == "base64" and isinstance(src.get("data"), str) else None
    spec = b.get("image_url") or b.get("file") or b  # image_url: {"url"} or a string; file: {"file_data"}; input_file: itself
    url = (spec.get("url") or spec.get("file_data")) if isinstance(spec, Mapping) else spec
    if isinstance(url, str) and url.startswith("data:"):
        return url.partition(",")[2]
    return None


def check_native(api: str, body: Mapping[str, Any], policy: Policy) -> None:
    """The host's attachment policy on a provider-native body (the SDK endpoints), which is
    otherwise forwarded unchanged: kinds turned off, and the size cap. Nothing to walk when the
    host allows every kind without a cap of its own (the default)."""
    if policy.kinds == ATTACHMENT_KINDS and policy.max_bytes is None:
        return
    name = "input" if api == "responses" else "messages"
    items = body.get(name)
    for i, m in enumerate(items if isinstance(items, list) else ()):
        content = m.get("content") if isinstance(m, Mapping) else None
        for j, b in enumerate(content if isinstance(content, list) else ()):
            kind = _NATIVE_KINDS.get(str(b.get("type"))) if isinstance(b, Mapping) else None
            if kind is None:
                continue
            path = f"{name}[{i}].content[{j}]"
            if kind not in policy.kinds:
                raise fail(path, f"this provider takes no {kind} attachments (the host turned them off)")
            cap = policy.max_bytes
            data = _native_data(b) if cap is not None else None
            if data is not None and cap is not None and decoded_size(data) > cap:
                raise fail(path, f"the {kind} is {size_text(decoded_size(data))}; this provider takes {kind}s up to {size_text(cap)}")
