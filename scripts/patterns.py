#!/usr/bin/env python3
"""Measures two messaging patterns on a deployment started by this script.

Usage: scripts/patterns.py BROKER      (embedded | rabbitmq, as scripts/e2e.py)

  1. delays: 300 custom messages through POST /api/messages with delays spread over
     200-3000 ms, to custom_messages; lateness = the consumer's receivedAt - (the
     envelope's timestamp + the delay). Both stamps are the server's clock.
  2. request/reply ahead of a backlog: the API alone takes BACKLOG creates (their
     events queue up in game_events), the workers start, and while they drain, 20
     sequential POST /api/games?wait=20s each time the full round trip (client clock),
     and the backlog left when the last one answered.
Needs target/release/retrocat (cargo build --release).
"""
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from e2e import Deployment, create_games, percentile

BACKLOG = 10_000


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.status, json.load(r)


def get(base, path):
    with urllib.request.urlopen(base + path) as r:
        return json.load(r)


def stamp_ms(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def delays(broker):
    dep = Deployment(broker)
    try:
        dep.start_http("serve" if broker == "embedded" else "api")
        if broker == "rabbitmq":
            dep.start("worker0", "worker")
        sent = {}

        def send(i):
            delay = 200 + (i * 2800) // 299
            status, answer = post(dep.base, "/api/messages",
                                  {"message": {"n": i}, "delayMs": delay})
            assert status == 201, status
            sent[answer["messageId"]] = delay

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(300)))
        deadline = time.monotonic() + 30
        while True:
            received = get(dep.base, "/api/messages/received?limit=1000")
            if len(received) >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        late = sorted(stamp_ms(r["receivedAt"]) - stamp_ms(r["body"]["timestamp"])
                      - sent[r["messageId"]] for r in received if r["messageId"] in sent)
        print(f"{broker}: {len(late)}/{len(sent)} delayed messages received; lateness "
              f"min {late[0]:.0f} ms, p50 {percentile(late, 50):.0f} ms, "
              f"p99 {percentile(late, 99):.0f} ms, max {late[-1]:.0f} ms", flush=True)
    finally:
        dep.close()


def overtaking(broker):
    dep = Deployment(broker)
    try:
        dep.start_http("api")
        create_games(dep.base, BACKLOG)
        if broker == "embedded":
            dep.stop("api")  # the backlog waits in the broker's file
            dep.start_http("serve")
        else:
            dep.start("worker0", "worker")
        times = []
        for i in range(20):
            start = time.monotonic()
            status, game = post(dep.base, "/api/games?wait=20s",
                                {"title": f"Waiting {i}", "platformId": 1, "genreId": 1,
                                 "developer": "Bench", "releaseYear": 1990})
            times.append((time.monotonic() - start) * 1000)
            assert status == 201 and game["processingStatus"] == "completed", (status, game)
        left = BACKLOG - dep.query("SELECT COUNT(*) FROM processing_attempts "
                                   "WHERE outcome = 'completed'")[0][0] + len(times)
        times.sort()
        print(f"{broker}: 20 waiting creates behind a backlog of {BACKLOG:,}: p50 "
              f"{percentile(times, 50):.0f} ms, max {times[-1]:.0f} ms; about {left:,} "
              "events still queued after the last", flush=True)
    finally:
        dep.close()


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("embedded", "rabbitmq"):
        sys.exit(__doc__)
    delays(sys.argv[1])
    overtaking(sys.argv[1])


if __name__ == "__main__":
    main()
