"""Child process for the kill -9 loop: appends synchronously and reports each outcome on stdout.

``A <id>`` is printed before an append is attempted and ``K <id>`` once it is durable. The parent
kills this process at a random moment and checks the store against what it printed.
"""

from __future__ import annotations

import sys

from homing.store import MessageStore, NewRecord, StoreConfig


def main() -> None:
    data_dir, prefix = sys.argv[1], sys.argv[2]
    store = MessageStore(
        StoreConfig(data_dir=data_dir, segment_size_bytes=256 * 1024, consume_queue_entries_per_file=512)
    )
    store.open()
    out = sys.stdout
    out.write("R\n")
    out.flush()
    index = 0
    while True:
        message_id = f"{prefix}-{index}"
        out.write(f"A {message_id}\n")
        out.flush()
        record = NewRecord("kill", index % 2, message_id.encode() * 40, message_id=message_id)
        store.append_durable([record])
        out.write(f"K {message_id}\n")
        out.flush()
        index += 1


if __name__ == "__main__":
    main()
