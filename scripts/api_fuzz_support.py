"""Support for `make api-fuzz` (scripts/api-fuzz.sh).

As a schemathesis hooks module (SCHEMATHESIS_HOOKS): tallies every answer of
`POST /callback`, one line per call in the file named by API_FUZZ_TALLY.

As a program, against the run's own RabbitMQ names (its TOPOLOGY_PREFIX):
  published-ids PREFIX   takes every check message from PREFIX.checks, prints the ids
                         they carry in all and those in messages published twice
  tally FILE             prints the totals of a tally file as shell `key=value` lines
  cleanup PREFIX NOTIFICATIONS_EXCHANGE
                         deletes the queues and exchanges the run's producer declared
"""

import json
import os
import sys
import threading

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")

_tally_lock = threading.Lock()

try:
    import schemathesis
except ImportError:  # run as a program, outside schemathesis
    schemathesis = None

if schemathesis is not None:

    @schemathesis.hook
    def after_call(context, case, response):
        """One line per callback answer: status and, for a 2xx, the ids it accepted."""
        if case.method.upper() != "POST" or case.path != "/callback":
            return
        accepted = 0
        if 200 <= response.status_code < 300:
            accepted = json.loads(response.content)["accepted"]
        with _tally_lock, open(os.environ["API_FUZZ_TALLY"], "a") as tally:
            tally.write(f"{response.status_code} {accepted}\n")


def tally(path):
    """Totals of a tally file: requests by status class, and ids accepted by 2xx."""
    kinds = {2: "accepted", 4: "rejected", 5: "server_errors"}
    totals = {"requests": 0, "accepted": 0, "rejected": 0, "server_errors": 0, "other": 0}
    totals["accepted_ids"] = 0
    with open(path) as lines:
        for line in lines:
            status, accepted = (int(field) for field in line.split())
            totals["requests"] += 1
            totals[kinds.get(status // 100, "other")] += 1
            totals["accepted_ids"] += accepted
    for key, value in totals.items():
        print(f"{key}={value}")


def published_ids(prefix):
    """Takes every message from PREFIX.checks (acking it) and prints, as shell
    `key=value` lines, the ids they carry in all (`published_ids`) and those in a
    message published again whole (`duplicate_ids`: the same ids with the same
    `accepted_at`, as a callback spooled after a late confirm is published twice; the
    pipeline is at-least-once and its writes idempotent)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    ids = 0
    duplicate_ids = 0
    seen = set()
    while True:
        method, _properties, body = channel.basic_get(f"{prefix}.checks")
        if method is None:
            break
        message = json.loads(body)
        count = len(message["object_ids"])
        ids += count
        key = (message.get("accepted_at"), tuple(message["object_ids"]))
        if key in seen:
            duplicate_ids += count
        seen.add(key)
        channel.basic_ack(method.delivery_tag)
    connection.close()
    print(f"published_ids={ids}")
    print(f"duplicate_ids={duplicate_ids}")


def cleanup(prefix, notifications_exchange):
    """Deletes what the run's producer declared; a name already gone is fine."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    for queue in (f"{prefix}.checks", f"{prefix}.checks.dead", f"{prefix}.notifications"):
        channel = connection.channel()
        try:
            channel.queue_delete(queue)
            channel.close()
        except pika.exceptions.ChannelClosedByBroker:
            pass
    for exchange in (f"{prefix}.callbacks", f"{prefix}.dead", notifications_exchange):
        channel = connection.channel()
        try:
            channel.exchange_delete(exchange)
            channel.close()
        except pika.exceptions.ChannelClosedByBroker:
            pass
    connection.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"tally": tally, "published-ids": published_ids, "cleanup": cleanup}[command](*args)
