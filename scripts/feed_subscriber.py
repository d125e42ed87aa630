"""Prints every reading Sightline stores, as the seed article's subscriber
does, through a service account and paho-mqtt (pip install paho-mqtt).

    python3 scripts/feed_subscriber.py --user reader --password <secret> \
        [--host 127.0.0.1] [--port 1883] [--topic 'sensor/#'] [--count N]

Each line is `device metric ts value`. With --count it exits after N
readings, which is how the tests run it.
"""

import argparse
import json
import sys

import paho.mqtt.client as mqtt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--topic", default="sensor/#")
    ap.add_argument("--count", type=int, default=0)
    args = ap.parse_args()
    seen = 0

    def on_connect(client, userdata, flags, reason, properties):
        if reason.is_failure:
            print(f"refused: {reason}", file=sys.stderr)
            client.disconnect()
            return
        # QoS 1: every message is acknowledged, none lost on a live link.
        client.subscribe(args.topic, qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):
        if any(r.is_failure for r in reasons):
            print(f"subscription to {args.topic} refused", file=sys.stderr)
            client.disconnect()
        else:
            print("subscribed", file=sys.stderr, flush=True)

    def on_message(client, userdata, msg):
        nonlocal seen
        batch = json.loads(msg.payload)
        for r in batch["readings"]:
            print(batch["device"], r["metric"], r["ts"], r["value"], flush=True)
            seen += 1
        if args.count and seen >= args.count:
            client.disconnect()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{args.user}-py")
    client.username_pw_set(args.user, args.password)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=30)
    client.loop_forever()
    return 0 if not args.count or seen >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
