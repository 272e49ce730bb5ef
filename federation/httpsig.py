"""RFC 9421 HTTP Message Signatures between nodes, with their Ed25519 node keys.

A signing node covers the method, the path (and query) and, when there is a body, its RFC 9530
`Content-Digest`; the `keyid` is its node id, which is the public key itself, so the receiver needs
nothing else to check it. Scheme and host are left out on purpose: nodes sit behind TLS-terminating
proxies that change them, and the key already names the sender.

After a key rotation the node signs with its current key and the `keyid` is `NODE_ID#KEY_ID` (as a
DID URL names one key of a DID): the receiver accepts it when it knows KEY_ID as that node's current
key (from the node's log, or from the key chain in its node document).

    Content-Digest: sha-256=:<base64>:
    Signature-Input: atrium=("@method" "@path" "@query" "content-digest");created=1763860000;keyid="z6Mk...";alg="ed25519"
    Signature: atrium=:<base64 signature>:
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Mapping

from node.core.errors import Unauthenticated
from node.core.identity import NodeIdentity, public_key_from_node_id, verify

LABEL = "atrium"
MAX_SKEW_SECONDS = 300
_INPUT_RE = re.compile(r'^(?P<label>[a-z][a-z0-9_-]*)=\((?P<components>[^)]*)\)(?P<params>(;[a-z]+=("[^"]*"|\d+))*)$')
_PARAM_RE = re.compile(r';([a-z]+)=("([^"]*)"|(\d+))')


def content_digest(body: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def _component(name: str, method: str, path: str, query: str, headers: Mapping[str, str]) -> str:
    if name == "@method":
        return method.upper()
    if name == "@path":
        return path
    if name == "@query":
        return f"?{query}"
    value = headers.get(name)
    if value is None:
        raise Unauthenticated(f"the signature covers {name}, which the request lacks")
    return value.strip()


def _base(components: list[str], params: str, method: str, path: str, query: str,
          headers: Mapping[str, str]) -> bytes:
    lines = [f'"{c}": {_component(c, method, path, query, headers)}' for c in components]
    covered = " ".join(f'"{c}"' for c in components)
    lines.append(f'"@signature-params": ({covered}){params}')
    return "\n".join(lines).encode()


def sign_request(identity: NodeIdentity, method: str, path: str, query: str = "", body: bytes | None = None,
                 now: float | None = None) -> dict[str, str]:
    """The headers that sign this request."""
    headers: dict[str, str] = {}
    components = ["@method", "@path", "@query"]
    if body is not None:
        headers["content-digest"] = content_digest(body)
        components.append("content-digest")
    keyid = f"{identity.node_id}#{identity.key_id}" if identity.rotated else identity.node_id
    params = f';created={int(now if now is not None else time.time())};keyid="{keyid}";alg="ed25519"'
    signature = identity.sign(_base(components, params, method, path, query, headers))
    covered = " ".join(f'"{c}"' for c in components)
    out = {"Content-Digest": headers["content-digest"]} if body is not None else {}
    out["Signature-Input"] = f"{LABEL}=({covered}){params}"
    out["Signature"] = f"{LABEL}=:{base64.b64encode(signature).decode()}:"
    return out


def signature_node(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """(node id, key id) a request's signature claims, before checking it; None when unsigned or unreadable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    found = re.search(r';keyid="([^"]*)"', lowered.get("signature-input") or "")
    if found is None:
        return None
    node_id, _, key_id = found.group(1).partition("#")
    return node_id, key_id or node_id


def verify_request(method: str, path: str, query: str, headers: Mapping[str, str], body: bytes | None,
                   now: float | None = None, *, current_keys: Mapping[str, str] | None = None) -> str:
    """The node id that signed this request; Unauthenticated (with the reason) otherwise. A rotated
    node's `NODE_ID#KEY_ID` is accepted when `current_keys` maps the node id to that key."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signature_input, signature = lowered.get("signature-input"), lowered.get("signature")
    if not signature_input or not signature:
        raise Unauthenticated("this needs an HTTP message signature (RFC 9421) by a node key")
    match = _INPUT_RE.match(signature_input.strip())
    if match is None or match["label"] != LABEL:
        raise Unauthenticated("Signature-Input is not one this node understands")
    components = [c.strip('"') for c in match["components"].split()]
    params = {m.group(1): m.group(3) if m.group(3) is not None else m.group(4) for m in _PARAM_RE.finditer(match["params"])}
    if params.get("alg") != "ed25519" or "keyid" not in params or "created" not in params:
        raise Unauthenticated("the signature needs keyid, created and alg=\"ed25519\"")
    if not {"@method", "@path"} <= set(components) or (body and "content-digest" not in components):
        raise Unauthenticated("the signature must cover @method, @path and, with a body, content-digest")
    created = int(params["created"])
    if abs((now if now is not None else time.time()) - created) > MAX_SKEW_SECONDS:
        raise Unauthenticated("the signature is too old or from the future (check the clocks)")
    if body is not None and "content-digest" in components and lowered.get("content-digest") != content_digest(body):
        raise Unauthenticated("Content-Digest does not match the body")
    prefix = f"{LABEL}=:"
    if not signature.startswith(prefix) or not signature.endswith(":"):
        raise Unauthenticated("Signature is malformed")
    node_id, _, key_id = params["keyid"].partition("#")
    key_id = key_id or node_id
    try:
        raw = base64.b64decode(signature[len(prefix):-1], validate=True)
        public_key_from_node_id(node_id)
        public_key_from_node_id(key_id)
    except Exception:
        raise Unauthenticated("Signature or keyid is malformed") from None
    if key_id != node_id and (current_keys or {}).get(node_id) != key_id:
        raise Unauthenticated(f"signed by {key_id}, which this node does not know as the current key of {node_id} "
                              "(it learns a node's keys from its log or its node document)")
    base = _base(components, match["params"], method, path, query, lowered)
    if not verify(key_id, base, raw):
        raise Unauthenticated(f"the signature of {params['keyid']} does not verify")
    return node_id


__all__ = ["content_digest", "sign_request", "signature_node", "verify_request"]
