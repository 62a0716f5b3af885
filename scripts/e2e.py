#!/usr/bin/env python3
"""End-to-end measurements of a retrocat deployment started by this script.

Usage: scripts/e2e.py BROKER WORKERS [GAMES] [RATE ...]
  BROKER   embedded | rabbitmq (the local RabbitMQ, guest/guest on 127.0.0.1:5672,
           in a fresh vhost made with rabbitmqctl for each phase)
  WORKERS  worker processes (rabbitmq); with the embedded broker the workers run
           inside `retrocat serve`, so this must be 1
  GAMES    games per phase (default 5000)
  RATE     fixed create rates for the latency phases (default 200 500)

Phases, each on a fresh SQLite database and broker:
  1. throughput: the API alone takes GAMES creates (their events queue up in
     game_events), then the workers start and drain the backlog. events/s =
     completed events / (last finishedAt - first startedAt of their attempts).
  2. latency, per RATE: every role running, GAMES creates at RATE/s; per game,
     finishedAt of its completed attempt - the game's createdAt (server clock, ms).
Each phase also checks that every game has exactly one completed attempt.
With E2E_DATABASE=postgres each phase gets a fresh PostgreSQL database on the local
server (postgres@127.0.0.1:5432, made and dropped with psql) instead of SQLite; with
E2E_DATABASE=mysql, one on the local MySQL/MariaDB (root@127.0.0.1:3306, with mysql).
Needs target/release/retrocat (cargo build --release). Client and server share the
machine: the figures include the load generator's cost.
"""
import json, os, shutil, signal, socket, sqlite3, subprocess, sys, tempfile, time
import urllib.request, uuid
from concurrent.futures import ThreadPoolExecutor

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "retrocat")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """A fresh database (and vhost) with retrocat processes started on demand."""

    def __init__(self, broker):
        self.dir = tempfile.mkdtemp(prefix="retrocat-e2e-")
        kind = os.environ.get("E2E_DATABASE", "sqlite")
        if kind != "sqlite" and kind not in SERVERS:
            sys.exit(f"E2E_DATABASE={kind}: use sqlite, postgres or mysql")
        self.server = SERVERS.get(kind)
        self.database = None
        database_url = f"sqlite://{self.dir}/retrocat.db"
        if self.server:
            self.database = f"retrocat_e2e_{uuid.uuid4().hex[:8]}"
            self.server.run(self.server.admin_database, f"CREATE DATABASE {self.database}")
            database_url = self.server.url + self.database
        self.env = dict(os.environ, DATABASE_URL=database_url,
                        RETROCAT_BROKER_PATH=f"{self.dir}/broker.db", RUST_LOG="warn")
        self.env.pop("RABBITMQ_URL", None)
        self.vhost = None
        if broker == "rabbitmq":
            self.vhost = f"retrocat-e2e-{uuid.uuid4().hex[:8]}"
            rabbitmqctl("add_vhost", self.vhost)
            rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
            self.env["RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs = {}
        subprocess.run([BIN, "migrate"], env=self.env, check=True)

    def start(self, name, *args):
        log = open(f"{self.dir}/{name}.log", "w")
        self.procs[name] = subprocess.Popen([BIN, *args], env=self.env, stdout=log, stderr=log)

    def start_http(self, role):
        self.start(role, role, "--listen", f"127.0.0.1:{self.port}")
        for _ in range(200):
            try:
                urllib.request.urlopen(self.base + "/readyz")
                return
            except Exception:
                time.sleep(0.05)
        sys.exit(f"{role} did not become ready; see {self.dir}/{role}.log")

    def stop(self, name):
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        if proc.wait(timeout=30) != 0:
            sys.exit(f"{name} exited with {proc.returncode}; see {self.dir}/{name}.log")

    def close(self):
        for name in list(self.procs):
            self.stop(name)
        if self.vhost:
            rabbitmqctl("delete_vhost", self.vhost)
        if self.database:
            self.server.run(self.server.admin_database,
                            self.server.drop.format(self.database))
        shutil.rmtree(self.dir)

    def query(self, sql):
        """The rows of a query, on whichever database this deployment uses."""
        if self.database:
            out = self.server.run(self.database, sql)
            return [tuple(int(v) if v.lstrip("-").isdigit() else v
                          for v in line.split(self.server.separator))
                    for line in out.splitlines() if line]
        with sqlite3.connect(f"{self.dir}/retrocat.db", timeout=30) as db:
            return db.execute(sql).fetchall()


class Server:
    """A database server on this machine and the command-line client that reaches it."""

    def __init__(self, client, url, admin_database, drop, separator):
        self.client, self.url, self.admin_database = client, url, admin_database
        self.drop, self.separator = drop, separator

    def run(self, database, sql):
        return subprocess.run([*self.client(database), sql], check=True,
                              capture_output=True, text=True).stdout


SERVERS = {
    "postgres": Server(lambda db: ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db,
                                   "-AtXq", "-c"],
                       "postgres://postgres@127.0.0.1:5432/", "postgres",
                       "DROP DATABASE {} WITH (FORCE)", "|"),
    "mysql": Server(lambda db: ["mysql", "-h", "127.0.0.1", "-u", "root", "-N", "-B",
                                "-D", db, "-e"],
                    "mysql://root@127.0.0.1:3306/", "mysql", "DROP DATABASE {}", "\t"),
}


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, stdout=subprocess.DEVNULL)


def create_games(base, n, rate=None):
    """Creates n games, at `rate` per second or as fast as 16 threads go."""
    def create(i):
        body = json.dumps({"title": f"E2E {i}", "platformId": 1, "genreId": 1,
                           "developer": "Bench", "releaseYear": 1990}).encode()
        req = urllib.request.Request(base + "/api/games", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 201, r.status
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        futures = []
        for i in range(n):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            futures.append(pool.submit(create, i))
        for f in futures:
            f.result()
    return time.monotonic() - start


def wait_completed(dep, n, timeout=300):
    """Waits until the n games are completed, each by exactly one attempt."""
    deadline = time.monotonic() + timeout
    while True:
        done = dep.query("SELECT COUNT(*) FROM games WHERE title LIKE 'E2E %' "
                         "AND processing_status = 'completed'")[0][0]
        if done == n:
            break
        if time.monotonic() > deadline:
            sys.exit(f"only {done}/{n} games completed; logs in {dep.dir}")
        time.sleep(0.2)
    twice = dep.query("SELECT COUNT(*) FROM (SELECT game_id FROM processing_attempts "
                      "WHERE outcome = 'completed' GROUP BY game_id "
                      "HAVING COUNT(*) > 1) twice")[0][0]
    assert twice == 0, f"{twice} games completed more than once"


def percentile(values, p):
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


def throughput(broker, workers, n):
    dep = Deployment(broker)
    try:
        dep.start_http("api")
        created_in = create_games(dep.base, n)
        print(f"created {n} games in {created_in:.1f} s: {n / created_in:,.0f} creates/s "
              "(16 client threads)", flush=True)
        if broker == "embedded":
            dep.stop("api")  # the backlog waits in the broker's file
            dep.start_http("serve")
        else:
            for w in range(workers):
                dep.start(f"worker{w}", "worker", "--worker-id", f"w{w}")
        wait_completed(dep, n)
        count, first, last = dep.query(
            "SELECT COUNT(*), MIN(started_at), MAX(finished_at) FROM processing_attempts "
            "WHERE outcome = 'completed'")[0]
        split = dep.query("SELECT worker, COUNT(*) FROM processing_attempts WHERE "
                          "outcome = 'completed' GROUP BY worker ORDER BY worker")
        rate = count / max(last - first, 1) * 1000
        shares = ", ".join(f"{c}" for _, c in split)
        print(f"{broker}, {workers} worker(s): drained {count} events in {last - first} ms: "
              f"{rate:,.0f} events/s (per worker: {shares})", flush=True)
    finally:
        dep.close()


def latency(broker, workers, n, rate):
    dep = Deployment(broker)
    try:
        if broker == "embedded":
            dep.start_http("serve")
        else:
            dep.start_http("api")
            for w in range(workers):
                dep.start(f"worker{w}", "worker", "--worker-id", f"w{w}")
        sent = create_games(dep.base, n, rate)
        wait_completed(dep, n)
        lat = sorted(row[0] for row in dep.query(
            "SELECT a.finished_at - g.created_at FROM games g JOIN processing_attempts a "
            "ON a.game_id = g.id AND a.outcome = 'completed' WHERE g.title LIKE 'E2E %'"))
        print(f"{broker}, {workers} worker(s), {n} creates at {rate}/s (sent in {sent:.1f} s): "
              f"p50 {percentile(lat, 50)} ms, p90 {percentile(lat, 90)} ms, "
              f"p99 {percentile(lat, 99)} ms, max {lat[-1]} ms", flush=True)
    finally:
        dep.close()


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("embedded", "rabbitmq"):
        sys.exit(__doc__)
    broker, workers = sys.argv[1], int(sys.argv[2])
    if broker == "embedded" and workers != 1:
        sys.exit("the embedded broker runs its workers inside `retrocat serve`: use 1")
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    rates = [float(r) for r in sys.argv[4:]] or [200.0, 500.0]
    throughput(broker, workers, n)
    for rate in rates:
        latency(broker, workers, n, rate)


if __name__ == "__main__":
    main()
