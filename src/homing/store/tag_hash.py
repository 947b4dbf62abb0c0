"""The tag hash kept in consume-queue entries, so a TAG filter can skip records without reading them.

Stable across processes and versions (it is written to disk): BLAKE2b with an 8-byte digest
(``digest_size=8``, not a cut BLAKE2b-512) of the UTF-8 tag, read big-endian. 0 is reserved for
"no tag"; a tag whose hash happens to be 0 is stored as 1 (a false positive for a filter, which
then compares the real tag, never a false negative).
"""

from __future__ import annotations

import hashlib

__all__ = ["NO_TAG_HASH", "tag_hash"]

NO_TAG_HASH = 0


def tag_hash(tag: str | None) -> int:
    if not tag:
        return NO_TAG_HASH
    # surrogatepass: a str may hold lone surrogates; the hash must still be total and stable.
    digest = hashlib.blake2b(tag.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    return value or 1
