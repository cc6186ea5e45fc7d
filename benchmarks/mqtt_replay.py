"""Store-and-forward cost: spool append time per result, and replay rate after a broker
restart, against a real mosquitto (or amqtt) on a free port.

    /work/venv/bin/python benchmarks/mqtt_replay.py --results 1000 --inflight 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from broker import Broker, Subscriber, describe_broker  # noqa: E402
from edge_agent.publish import MqttOptions, MqttPublisher, json_bytes  # noqa: E402
from edge_agent.spool import Spool  # noqa: E402
from pub_driver import make_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=10)
    args = ap.parse_args()
    n = args.results
    tmp = Path(tempfile.mkdtemp(prefix="mqtt-replay-"))
    broker = Broker(tmp / "broker").start()
    sub = Subscriber(broker, "edge-agent/dev1/#").start()
    broker.stop()
    spool = Spool.in_state_dir(tmp / "state")
    pub = MqttPublisher(MqttOptions(broker=broker.url, reconnect_min=0.1, reconnect_max=0.2, inflight=args.inflight),
                        spool, "dev1")
    pub.start()
    t = time.perf_counter()
    for i in range(n):
        pub.publish_result(make_result("cam0", i))
    t_append = time.perf_counter() - t
    broker.start()
    t = time.perf_counter()
    left = pub.drain(600)
    t_drain = time.perf_counter() - t
    sub.wait_for(lambda msgs: sum(m.topic.endswith("/detections") for m in msgs) >= n, 120)
    pub.close()
    sub.stop()
    broker.stop()
    size = len(json_bytes(make_result("cam0", 0).to_payload("dev1")))
    print(f"broker: {describe_broker()}")
    print(f"results={n} payload={size} B inflight={args.inflight}: spool append {t_append / n * 1000:.2f} ms/result "
          f"(SQLite WAL, synchronous=FULL); replay after broker restart {n / t_drain:.0f} results/s "
          f"({t_drain:.2f} s incl. reconnect); left in spool {left}")


if __name__ == "__main__":
    main()
