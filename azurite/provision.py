"""Create the queues Flowcraft's Azure backend uses, in Azurite or a real storage account.

usage: python azurite/provision.py [--connection-string CS] [--queue NAME] [--dlq NAME]

The connection string comes from --connection-string, else $AZURE_STORAGE_CONNECTION_STRING, else
Azurite's development account on 127.0.0.1:$AZURITE_QUEUE_PORT (default 10001). Idempotent: queues that
exist are left alone. Needs azure-storage-queue.

The authoritative layout is the flowcraft-azure package's `flowcraft setup --backend azure`; keep the
queue names here identical to what it creates.
"""

from __future__ import annotations

import argparse
import os
import sys

DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"QueueEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};"
    )


def provision(connection_string: str, queues: list[str]) -> list[str]:
    """Create each queue unless it exists; returns the names that were created."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import QueueServiceClient

    service = QueueServiceClient.from_connection_string(connection_string)
    created = []
    for name in queues:
        try:
            service.create_queue(name)
            created.append(name)
        except ResourceExistsError:
            pass
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connection-string", default=os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
    parser.add_argument("--queue", default=os.environ.get("FLOWCRAFT_QUEUE", "flowcraft-queue"))
    parser.add_argument("--dlq", default=os.environ.get("FLOWCRAFT_DLQ", "flowcraft-queue-dlq"))
    args = parser.parse_args(argv)
    conn = args.connection_string or azurite_connection_string(int(os.environ.get("AZURITE_QUEUE_PORT", "10001")))
    try:
        created = provision(conn, [args.queue, args.dlq])
    except ImportError:
        print("azure-storage-queue is not installed: pip install azure-storage-queue", file=sys.stderr)
        return 1
    for name in (args.queue, args.dlq):
        print(f"queue {name}: {'created' if name in created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
