"""An SP's backend against the gtpcharge billing API, in Python with grpcio: create a purchase, hand its
token to the app, watch the purchase until it ends. `--then-cancel` cancels it right after creating it,
so the watch ends without traffic. With GTPCHARGE_WEBHOOK_PORT and GTPCHARGE_WEBHOOK_SECRET set, it also
receives the purchase's webhooks on 127.0.0.1:PORT and verifies each signature.
Code is generated from proto/ on first run (grpcio-tools). Run: examples/README.md."""
import hashlib, hmac, http.server, os, pathlib, queue, sys, threading, time

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


def verify_webhook(secret, header, body, tolerance_s=300):
    """Gtpcharge-Signature: t=T,v1=HEX(HMAC-SHA256(secret, "T.<raw body>")); any v1 may match (rotation)."""
    parts = [part.split("=", 1) for part in header.split(",") if "=" in part]
    t = next((value for key, value in parts if key == "t"), "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(key == "v1" and hmac.compare_digest(value, expected) for key, value in parts)


def webhook_receiver(port, secret):
    """Events whose signature verified, from an HTTP server on 127.0.0.1:port (a thread)."""
    import json
    events = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            ok = verify_webhook(secret, self.headers.get("Gtpcharge-Signature", ""), body)
            self.send_response(200 if ok else 400)
            self.end_headers()
            if ok:
                events.put(json.loads(body))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return events


def main():
    import grpc
    pb, pb_grpc = generated_modules()
    url = os.environ.get("GTPCHARGE_URL", "127.0.0.1:50051").removeprefix("http://")
    key = os.environ.get("GTPCHARGE_API_KEY") or sys.exit("set GTPCHARGE_API_KEY to the SP's API key")
    auth = [("authorization", f"Bearer {key}")]
    purchases = pb_grpc.PurchaseServiceStub(grpc.insecure_channel(url))
    port, secret = os.environ.get("GTPCHARGE_WEBHOOK_PORT"), os.environ.get("GTPCHARGE_WEBHOOK_SECRET")
    webhooks = webhook_receiver(port, secret) if port and secret else None

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
            while webhooks is not None:  # the same end, pushed: wait for its verified webhook
                event = webhooks.get(timeout=30)
                if event["data"]["id"] == purchase.id and event["data"]["state"] != "pending":
                    print(f"webhook {event['id']} {event['type']} verified", flush=True)
                    break
            return
    sys.exit("the watch ended before the purchase did")


if __name__ == "__main__":
    main()
