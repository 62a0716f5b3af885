#!/usr/bin/env python3
"""Memory and drain rate of `retrocat serve` working off a backlog of queued events.

Usage: scripts/backlog.py EVENTS [DIR]
  EVENTS  events in the backlog (scripts/seed.py --events: games whose game.created
          event waits in the outbox, as if the API had taken them while nothing ran)
  DIR     working directory, made fresh (default: a temporary one)

Starts `retrocat serve` on the seeded catalog with the embedded broker, samples its
resident memory (VmRSS) every 0.5 s until every game is completed, and prints the
peak, and the drain rate: completed events / (last finishedAt - first startedAt of
their attempts), so the seeding and the start-up are not counted. Also checks that
every game has exactly one completed attempt. Needs target/release/retrocat.
"""
import os, socket, sqlite3, subprocess, sys, tempfile, time

ROOT = os.path.join(os.path.dirname(__file__), "..")
BIN = os.path.join(ROOT, "target", "release", "retrocat")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    events = int(sys.argv[1])
    work = sys.argv[2] if len(sys.argv) == 3 else tempfile.mkdtemp(prefix="backlog-")
    os.makedirs(work, exist_ok=True)
    catalog = os.path.join(work, "catalog.db")
    for name in os.listdir(work):
        os.remove(os.path.join(work, name))
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "seed.py"),
                    catalog, str(events), "--events"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [BIN, "serve", "--port", str(port), "--database-url", f"sqlite://{catalog}",
         "--broker-path", os.path.join(work, "broker.db")],
        env={**os.environ, "RUST_LOG": "warn"}, stderr=open(os.path.join(work, "serve.log"), "w"))
    db = sqlite3.connect(catalog)
    peak, last_check, completed = 0.0, 0.0, 0
    started = time.monotonic()
    try:
        while completed < events:
            peak = max(peak, rss_mb(server.pid))
            if time.monotonic() - last_check >= 5:
                last_check = time.monotonic()
                completed = db.execute(
                    "SELECT COUNT(*) FROM processing_attempts WHERE outcome = 'completed'"
                ).fetchone()[0]
                print(f"{time.monotonic() - started:6.0f} s  {completed:>9,} completed  "
                      f"RSS {rss_mb(server.pid):6.1f} MB (peak {peak:.1f})", file=sys.stderr)
                if server.poll() is not None:
                    sys.exit(f"retrocat serve exited: see {work}/serve.log")
            time.sleep(0.5)
    finally:
        server.terminate()
        server.wait()
    first, last, attempts, games = db.execute(
        "SELECT MIN(started_at), MAX(finished_at), COUNT(*), COUNT(DISTINCT game_id)"
        " FROM processing_attempts WHERE outcome = 'completed'").fetchone()
    assert attempts == games == events, f"{attempts} attempts for {games} of {events} games"
    rate = events / ((last - first) / 1000)
    print(f"{events:,} events drained at {rate:,.0f} events/s; peak RSS {peak:.1f} MB; "
          f"each game completed exactly once")


if __name__ == "__main__":
    main()
