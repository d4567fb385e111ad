#!/usr/bin/env python3
"""Cluster delay (benches/RESULTS.md): how long a session change takes from its publication by one probe
to its arrival on another, through the NATS JetStream server at $NATS (default nats://127.0.0.1:4222).

  python3 benches/cluster-delay.py [GTPCHARGE]   (default target/release/gtpcharge)

Generates the capture of the figures (3,000 subscribers), keeps its control plane (GTP-C, GTPv0), and
 - steady: feeds it to `replay -` one frame every 10 ms while a second `replay -` follows the stream;
 - burst: replays it at full speed while the follower waits.
Prints each follower's summary line (`view-delay p50 / p99`)."""
import os, random, struct, subprocess, sys, tempfile, time

G = sys.argv[1] if len(sys.argv) > 1 else "target/release/gtpcharge"
NATS = os.environ.get("NATS", "nats://127.0.0.1:4222")


def control_plane(capture):
    data = open(capture, "rb").read()
    header, records, at = data[:24], [], 24
    while at + 16 <= len(data):
        caplen = struct.unpack("<I", data[at + 8:at + 12])[0]
        record = data[at:at + 16 + caplen]
        frame, at = record[16:], at + 16 + caplen
        ethertype, off = struct.unpack(">H", frame[12:14])[0], 14
        while ethertype in (0x8100, 0x88A8):
            ethertype, off = struct.unpack(">H", frame[off + 2:off + 4])[0], off + 4
        if ethertype == 0x0800 and len(frame) > off + 28 and frame[off + 9] == 17:
            udp = off + (frame[off] & 15) * 4
        elif ethertype == 0x86DD and len(frame) > off + 48 and frame[off + 6] == 17:
            udp = off + 40
        else:
            continue
        ports = struct.unpack(">HH", frame[udp:udp + 4])
        if 2123 in ports or 3386 in ports:
            records.append(record)
    return header, records


def run(name, header, records, pause):
    follow = [G, "replay", "-", "--single-thread", "--cluster", NATS, "--cluster-name", name, "--probe-id"]
    follower = subprocess.Popen(follow + ["follower"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    follower.stdin.write(header)
    follower.stdin.flush()
    time.sleep(1)
    publisher = subprocess.Popen(follow + ["publisher"], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    publisher.stdin.write(header)
    for record in records:
        publisher.stdin.write(record)
        if pause:
            publisher.stdin.flush()
            time.sleep(pause)
    publisher.stdin.close()
    publisher.wait()
    time.sleep(1)
    follower.stdin.close()
    summary = follower.stderr.read().decode()
    follower.wait()
    return next((line for line in summary.splitlines() if line.startswith("cluster ")), summary)


with tempfile.TemporaryDirectory() as work:
    capture = os.path.join(work, "big.pcap")
    subprocess.run([G, "generate", "--out", capture, "--seed", "9", "--subscribers", "3000", "--rounds", "2",
                    "--background", "2"], check=True, stderr=subprocess.DEVNULL)
    header, records = control_plane(capture)
    tag = random.randint(0, 1 << 30)
    print("steady:", run(f"delay-steady-{tag}", header, records[:2000], 0.01))
    print("burst: ", run(f"delay-burst-{tag}", header, records, 0))
