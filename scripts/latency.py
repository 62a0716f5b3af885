"""Create N games at a fixed rate through the API, then read each game's
processing history and report create -> completed latency (server clock)."""
import json, sys, time, threading, urllib.request
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 200.0

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())

def create(i):
    return call("POST", "/api/games", {"title": f"Latency {i} {time.time_ns()}", "platformId": 1,
               "genreId": 1, "developer": "Bench", "releaseYear": 1990})

ids = []
start = time.monotonic()
with ThreadPoolExecutor(16) as pool:
    futures = []
    for i in range(n):
        target = start + i / rate
        delay = target - time.monotonic()
        if delay > 0: time.sleep(delay)
        futures.append(pool.submit(create, i))
    ids = [f.result()["id"] for f in futures]
sent = time.monotonic() - start

def ts(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

lat = []
deadline = time.monotonic() + 120
for gid in ids:
    while True:
        game = call("GET", f"/api/games/{gid}")
        if game["processingStatus"] == "completed": break
        if time.monotonic() > deadline: sys.exit(f"game {gid} not completed")
        time.sleep(0.05)
    hist = call("GET", f"/api/games/{gid}/history")
    done = [h for h in hist if h["outcome"] == "completed"]
    assert len(done) == 1, (gid, hist)
    lat.append((ts(done[0]["finishedAt"]) - ts(game["createdAt"])) * 1000)
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(round(p / 100 * len(lat))) - 1)]
print(f"{n} games at {rate:.0f}/s (sent in {sent:.2f}s): p50 {pct(50):.1f} ms, "
      f"p90 {pct(90):.1f} ms, p99 {pct(99):.1f} ms, max {lat[-1]:.1f} ms")
