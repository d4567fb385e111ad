"""An SP's backend against the gtpcharge billing API, in Python with grpcio: create a purchase, hand its
token to the app, watch the purchase until it ends. `--then-cancel` cancels it right after creating it,
so the watch ends without traffic.
Code is generated from proto/ on first run (grpcio-tools). Run: examples/README.md."""
import os, pathlib, sys, time

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto" / "proto"
GENERATED = HERE / "generated"


def generated_modules():
    """billing_pb2 and billing_pb2_grpc, generated from proto/ when missing or older than the .proto."""
    source = PROTO / "gtpcharge" / "v1" / "billing.proto"
    target = GENERATED / "gtpcharge" / "v1" / "billing_pb2.py"
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        from grpc_tools import protoc
        GENERATED.mkdir(exist_ok=True)
        args = ["protoc", f"-I{PROTO}", f"--python_out={GENERATED}", f"--grpc_python_out={GENERATED}", str(source)]
        if protoc.main(args) != 0:
            sys.exit("generating the Python code from proto/ failed")
    sys.path.insert(0, str(GENERATED))
    from gtpcharge.v1 import billing_pb2, billing_pb2_grpc
    return billing_pb2, billing_pb2_grpc


def main():
    import grpc
    pb, pb_grpc = generated_modules()
    url = os.environ.get("GTPCHARGE_URL", "127.0.0.1:50051").removeprefix("http://")
    key = os.environ.get("GTPCHARGE_API_KEY") or sys.exit("set GTPCHARGE_API_KEY to the SP's API key")
    auth = [("authorization", f"Bearer {key}")]
    purchases = pb_grpc.PurchaseServiceStub(grpc.insecure_channel(url))

    # The idempotency key is the SP's own order reference: retrying with it never makes a second purchase.
    request = pb.CreatePurchaseRequest(product_id="premium-week", description="Premium, one week", amount=299,
                                       currency="EUR", expires_in_s=900, idempotency_key=f"order-{time.time_ns()}")
    purchase = purchases.CreatePurchase(request, metadata=auth)
    print(f"created purchase {purchase.id} token {purchase.token}", flush=True)

    # Watch from the start; resume later with the last cursor seen.
    changes = purchases.WatchPurchases(pb.WatchPurchasesRequest(after_cursor=0), metadata=auth, timeout=900)
    if "--then-cancel" in sys.argv:
        purchases.CancelPurchase(pb.CancelPurchaseRequest(id=purchase.id), metadata=auth)
    for change in changes:
        if change.purchase.id != purchase.id:
            continue
        state = pb.PurchaseState.Name(change.purchase.state)
        print(f"cursor {change.cursor} purchase {purchase.id} {state}", flush=True)
        if state not in ("PURCHASE_STATE_PENDING", "PURCHASE_STATE_UNSPECIFIED"):
            changes.cancel()
            return
    sys.exit("the watch ended before the purchase did")


if __name__ == "__main__":
    main()
