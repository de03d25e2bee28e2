"""The Catalog gRPC service (catalog.proto) on 127.0.0.1:PORT, in two versions: v2 changes one field
(item 2's price_cents) so a replay of a v1 capture fails naming it; v3 has an item 99 (NOT_FOUND in
v1: the grpc-status changes).

    python server.py PORT v1|v2|v3 GENERATED_DIR    (GENERATED_DIR: grpc_tools.protoc's output)
"""

import sys
from concurrent import futures

sys.path.insert(0, sys.argv[3])

import grpc  # noqa: E402

import catalog_pb2  # noqa: E402
import catalog_pb2_grpc  # noqa: E402

VERSION = sys.argv[2]
ITEMS = {
    1: dict(name="pencil", price_cents=120, tags=["office"]),
    2: dict(name="notebook", price_cents=499 if VERSION == "v2" else 450, tags=["office", "paper"]),
    3: dict(name="stapler", price_cents=1299, tags=[]),
}
if VERSION == "v3":
    ITEMS[99] = dict(name="mystery", price_cents=1, tags=[])


class Catalog(catalog_pb2_grpc.CatalogServicer):
    def GetItem(self, request, context):
        item = ITEMS.get(request.id)
        if item is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no item {request.id}")
        return catalog_pb2.Item(id=request.id, **item)

    def ListItems(self, request, context):
        for item_id in sorted(ITEMS)[:request.limit or None]:  # v3's item 99 comes after the limit
            yield catalog_pb2.Item(id=item_id, **ITEMS[item_id])

    def CreateItem(self, request, context):
        return catalog_pb2.Item(id=100, name=request.name, price_cents=request.price_cents)


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    catalog_pb2_grpc.add_CatalogServicer_to_server(Catalog(), server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
