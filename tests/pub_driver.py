"""A small real process that publishes FrameResults through edge_agent.publish, driven by
commands on stdin, so tests can kill it, stop the broker under it, and restart it.

    pub N            publish N results (seq continues); answers "spooled <seq> depth=<n>"
    camera CAM STATE camera_state(CAM, STATE); answers "ok"
    stats            publish_stats({...}); answers "ok"
    drain T          answers "drained <remaining>"
    close            close(); answers "closed" and exits 0

The password comes from the environment (EDGE_AGENT_MQTT_PASSWORD), never argv.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

from edge_agent.publish import MqttOptions, MqttPublisher, StdoutPublisher
from edge_agent.result import FrameResult
from edge_agent.secret import Secret
from edge_agent.spool import Spool, SpoolOptions
from edge_agent.tiling.regions import Regions

LABELS = ("bottle", "can", "box")


def make_result(camera_id: str, seq: int) -> FrameResult:
    n = 1 + seq % 3
    boxes = np.array([[10 + 50 * i, 20, 40 + 50 * i, 90.5] for i in range(n)])
    det = Regions(boxes, np.linspace(0.9, 0.5, n), tuple(LABELS[(seq + i) % 3] for i in range(n)))
    quads = np.array([[5, 100, 60, 100, 60, 115, 5, 115]], dtype=float)
    text = Regions.from_quads(quads, [0.8], (f"PRICE {seq}",))
    return FrameResult(camera_id=camera_id, seq=seq, captured_at=time.time(), width=640, height=480,
                       detections=det, text=text, model={"name": "tiny-florence2", "variant": "_fp32"},
                       tiles=2, resplit=[[0, 0, 320, 480]] if seq % 2 else [],
                       timings={"plan": 0.001, "engine": 0.5, "merge": 0.002, "total": 0.51})


def build(args):
    if args.stdout:
        return StdoutPublisher(args.device_id)
    settings = MqttOptions(
        broker=args.broker, protocol=args.protocol, username=args.username or "",
        password=Secret(os.environ.get("EDGE_AGENT_MQTT_PASSWORD", "")), ca_file=args.tls_ca or "",
        cert_file=args.tls_cert or "", key_file=args.tls_key or "", reconnect_min=args.reconnect_min,
        reconnect_max=args.reconnect_max, inflight=args.inflight, keepalive=args.keepalive,
    )
    spool = Spool.in_state_dir(args.state_dir, SpoolOptions(max_mb=args.spool_mb))
    return MqttPublisher(settings, spool, args.device_id)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="")
    ap.add_argument("--stdout", action="store_true")
    ap.add_argument("--device-id", default="dev1")
    ap.add_argument("--camera-id", default="cam0")
    ap.add_argument("--state-dir", default=".")
    ap.add_argument("--protocol", default="3.1.1")
    ap.add_argument("--username")
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--start-seq", type=int, default=0)
    ap.add_argument("--reconnect-min", type=float, default=0.2)
    ap.add_argument("--reconnect-max", type=float, default=1.0)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--keepalive", type=int, default=10)
    ap.add_argument("--spool-mb", type=float, default=100.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    pub = build(args)
    pub.start()
    seq = args.start_seq
    reply = sys.stderr if args.stdout else sys.stdout
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "pub":
            for _ in range(int(rest[0])):
                pub.publish_result(make_result(args.camera_id, seq))
                seq += 1
            depth = pub.spool.depth() if hasattr(pub, "spool") else 0
            print(f"spooled {seq - 1} depth={depth}", file=reply, flush=True)
        elif cmd == "camera":
            pub.camera_state(rest[0], rest[1])
            print("ok", file=reply, flush=True)
        elif cmd == "stats":
            pub.publish_stats({"frames": seq - args.start_seq, "latency_s": 0.5})
            print("ok", file=reply, flush=True)
        elif cmd == "drain":
            print(f"drained {pub.drain(float(rest[0]))}", file=reply, flush=True)
        elif cmd == "close":
            pub.close()
            print("closed", file=reply, flush=True)
            return 0
    pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
