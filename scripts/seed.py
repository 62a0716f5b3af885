#!/usr/bin/env python3
"""Fill an SQLite catalog with many games, for the scale and backlog measurements.

Usage: scripts/seed.py PATH GAMES [--events] [--words]
  PATH      the catalog file (sqlite://PATH for retrocat); migrated first with
            `retrocat migrate`, so it may not exist yet
  GAMES     games to add
  --events  also queue each game's `game.created` event in the outbox, as the API
            writes it, with the game `pending`: a backlog of GAMES events that the
            next `retrocat serve` on this file relays and processes. Without it the
            games are `completed`, with nothing queued.
  --words   titles and developers made of words, as a real catalog's are ("Crimson
            Dragon Saga III", "Pixel Forge"), instead of "Seed game NNNNNNN": every
            numbered title shares the trigrams of "Seed game 0", the worst case of a
            trigram index, where worded titles share few.

Going through the API would take GAMES / (creates per second) to build the catalog;
this writes the same rows directly, in one transaction per 50,000 games. Titles are
"Seed game NNNNNNN" (seven digits, so no title holds another) and developers
"Seed studio (N mod 1000)", unless --words; platforms, genres and years spread over
the seeded reference data. Needs target/release/retrocat.
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


FIRST = ("Crimson", "Silent", "Golden", "Shadow", "Iron", "Neon", "Frozen", "Lost",
         "Hidden", "Burning", "Electric", "Ancient", "Cosmic", "Wild", "Broken", "Royal",
         "Savage", "Crystal", "Thunder", "Midnight", "Rogue", "Stellar", "Haunted",
         "Turbo", "Mystic", "Sacred", "Rapid", "Atomic", "Velvet", "Solar", "Lunar",
         "Scarlet", "Emerald", "Obsidian", "Phantom", "Blazing", "Eternal", "Feral",
         "Hyper", "Jade", "Karmic", "Lucky", "Mighty", "Nimble", "Omega", "Primal",
         "Quantum", "Radiant", "Sonic", "Toxic", "Ultra", "Vivid", "Wicked")
SECOND = ("Dragon", "Knight", "Falcon", "Wizard", "Ninja", "Robot", "Pirate", "Galaxy",
          "Castle", "Dungeon", "Racer", "Samurai", "Viking", "Comet", "Golem", "Hunter",
          "Jungle", "Kingdom", "Labyrinth", "Monster", "Nebula", "Oracle", "Paladin",
          "Quest", "Raptor", "Serpent", "Titan", "Unicorn", "Vampire", "Warrior",
          "Yeti", "Zephyr", "Arena", "Blade", "Cavern", "Desert", "Empire", "Fortress",
          "Gauntlet", "Harbor", "Island", "Journey", "Kraken", "Legion", "Mecha",
          "Nomad", "Outpost", "Phoenix", "Reactor", "Spectre", "Tundra", "Voyager",
          "Warden", "Abyss", "Bandit", "Cyborg", "Drifter", "Engine", "Fighter")
THIRD = ("Saga", "Legends", "Chronicles", "Adventure", "Tactics", "Rally", "Odyssey",
         "Showdown", "Uprising", "Revenge", "Rising", "Origins", "Assault", "Escape",
         "Frontier", "Heroes", "Invasion", "Kart", "League", "Mayhem", "Nightmare",
         "Offensive", "Party", "Rampage", "Siege", "Tournament", "Unleashed", "Venture",
         "Wars", "Blitz", "Crusade", "Dash", "Fury", "Gambit", "Horizon", "Impact",
         "Jam", "Kombat", "Mission", "Overdrive", "Panic", "Quake", "Rebellion",
         "Strike", "Trials", "Unbound", "Vendetta", "Wrath", "Arcade", "Brawl",
         "Circuit", "Deluxe", "Evolution", "Force", "Genesis", "Hazard", "Infinity",
         "Jackpot", "Kingpin", "Lockdown", "Mania")
FOURTH = ("", " II", " III", " IV", " 64", " Advance", " Deluxe", " Turbo", " Plus",
          " Zero")
STUDIOS = ("Pixel Forge", "Bitwave", "Retro Arcade", "Starlight Games", "Cartridge Co",
           "Neon Owl", "Sprite Works", "Blue Lynx", "Eight Bit Bros", "Joypad Studio",
           "Vector Vault", "Chiptune Labs", "Moonbase", "Red Comet", "Tile Engine",
           "Hyperion Soft", "Scanline", "Paletteworks", "Dot Matrix", "Cobalt Games")


def worded(n):
    """A title and a developer made of words; titles are unique up to 1,900,000 games."""
    n, a = divmod(n, len(FIRST))
    n, b = divmod(n, len(SECOND))
    n, c = divmod(n, len(THIRD))
    title = f"{FIRST[a]} {SECOND[b]} {THIRD[c]}{FOURTH[n % len(FOURTH)]}"
    return title, f"{STUDIOS[(a + b) % len(STUDIOS)]} {c % 50}"


def main():
    flags = {"--events", "--words"}
    args = [a for a in sys.argv[1:] if a not in flags]
    if len(args) != 2:
        sys.exit(__doc__)
    path, games = args[0], int(args[1])
    events = "--events" in sys.argv[1:]
    words = "--words" in sys.argv[1:]
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
            title, developer = worded(n) if words else (
                f"Seed game {n:07d}", f"Seed studio {n % 1000}")
            game = {
                "title": title,
                "platformId": platforms[n % len(platforms)],
                "genreId": genres[n % len(genres)],
                "developer": developer,
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
