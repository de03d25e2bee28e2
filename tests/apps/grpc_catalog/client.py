"""A grpcio client making the calls of the recorded fixture on one channel (one HTTP/2 connection),
printing the ground truth as JSON lines: method, request, status, replies.

    python client.py PORT GENERATED_DIR
"""

import json
import sys

sys.path.insert(0, sys.argv[2])

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

import catalog_pb2  # noqa: E402
import catalog_pb2_grpc  # noqa: E402


def show(method, request, status, replies):
    print(json.dumps({"method": method, "request": json_format.MessageToDict(request), "status": status,
                      "replies": [json_format.MessageToDict(r) for r in replies]}), flush=True)


def main() -> None:
    with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
        stub = catalog_pb2_grpc.CatalogStub(channel)
        for item_id in (1, 2):
            request = catalog_pb2.GetItemRequest(id=item_id)
            show("/shop.v1.Catalog/GetItem", request, 0, [stub.GetItem(request)])
        request = catalog_pb2.GetItemRequest(id=99)
        try:
            stub.GetItem(request)
        except grpc.RpcError as exc:
            show("/shop.v1.Catalog/GetItem", request, exc.code().value[0], [])
        request = catalog_pb2.ListItemsRequest(limit=3)
        show("/shop.v1.Catalog/ListItems", request, 0, list(stub.ListItems(request)))
        request = catalog_pb2.CreateItemRequest(name="pen", price_cents=99)
        show("/shop.v1.Catalog/CreateItem", request, 0, [stub.CreateItem(request)])
        # two calls in flight together: concurrent streams on the one connection
        requests = [catalog_pb2.GetItemRequest(id=3), catalog_pb2.GetItemRequest(id=1)]
        calls = [stub.GetItem.future(r) for r in requests]
        for request, call in zip(requests, calls):
            show("/shop.v1.Catalog/GetItem", request, 0, [call.result()])


if __name__ == "__main__":
    main()
