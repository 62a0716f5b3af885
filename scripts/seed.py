#!/usr/bin/env python3
"""Fill an SQLite catalog with many games, for the scale and backlog measurements.

Usage: scripts/seed.py PATH GAMES [--events]
  PATH      the catalog file (sqlite://PATH for retrocat); migrated first with
            `retrocat migrate`, so it may not exist yet
  GAMES     games to add
  --events  also queue each game's `game.created` event in the outbox, as the API
            writes it, with the game `pending`: a backlog of GAMES events that the
            next `retrocat serve` on this file relays and processes. Without it the
            games are `completed`, with nothing queued.

Going through the API would take GAMES / (creates per second) to build the catalog;
this writes the same rows directly, in one transaction per 50,000 games. Titles are
"Seed game NNNNNNN" (seven digits, so no title holds another), developers
"Seed studio (N mod 1000)", platforms, genres and years spread over the seeded
reference data. Needs target/release/retrocat.
"""
import json, os, random, sqlite3, subprocess, sys, time, uuid
from datetime import datetime, timezone

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "retrocat")
CHUNK = 50_000


def uuid7(ms):
    """A version 7 UUID for the millisecond `ms`, as retrocat's event ids are."""
    value = (ms << 80) | (0x7 << 76) | (random.getrandbits(12) << 64)
    value |= (0b10 << 62) | random.getrandbits(62)
    return str(uuid.UUID(int=value))


def iso(ms):
    stamp = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def main():
    args = [a for a in sys.argv[1:] if a != "--events"]
    if len(args) != 2:
        sys.exit(__doc__)
    path, games = args[0], int(args[1])
    events = "--events" in sys.argv[1:]
    subprocess.run([BIN, "migrate", "--database-url", f"sqlite://{path}"], check=True)
    db = sqlite3.connect(path, isolation_level=None)
    platforms = [r[0] for r in db.execute("SELECT id FROM platforms")]
    genres = [r[0] for r in db.execute("SELECT id FROM genres")]
    first = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM games").fetchone()[0]
    status = "pending" if events else "completed"
    started = time.monotonic()
    for chunk_start in range(first, first + games, CHUNK):
        ids = range(chunk_start, min(chunk_start + CHUNK, first + games))
        now = int(time.time() * 1000)
        rows, outbox = [], []
        for n in ids:
            year = 1970 + n % 40
            game = {
                "title": f"Seed game {n:07d}",
                "platformId": platforms[n % len(platforms)],
                "genreId": genres[n % len(genres)],
                "developer": f"Seed studio {n % 1000}",
                "releaseYear": year,
                "yearCategory": f"{year - year % 10}s",
                "description": "",
                "imageUrl": None,
            }
            rows.append((n, game["title"], game["platformId"], game["genreId"],
                         game["developer"], year, game["yearCategory"], status, now, now))
            if events:
                event_id = uuid7(now)
                body = {"gameId": n, "action": "create", "gameData": game,
                        "timestamp": iso(now), "eventId": event_id, "version": 1}
                outbox.append(("catalog.events", "game.created", event_id,
                               json.dumps(body, separators=(",", ":")).encode(), now))
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO games (id, title, platform_id, genre_id, developer, release_year,"
            " year_category, processing_status, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany(
            "INSERT INTO outbox (exchange, routing_key, message_id, body, created_at)"
            " VALUES (?, ?, ?, ?, ?)", outbox)
        db.execute("COMMIT")
        if sys.stderr.isatty():
            done = ids[-1] - first + 1
            print(f"\r{done:,} / {games:,} games", end="", file=sys.stderr, flush=True)
    db.execute("PRAGMA optimize")
    print(f"\r{games:,} games added in {time.monotonic() - started:.0f} s"
          f"{', each with its game.created event queued' if events else ''}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
