//! The requests of a run: the setup that makes the games a workload acts on, and the
//! measured requests, each timed from the moment it was due.

use super::report::{ErrorLog, Histogram};
use super::tracker::{Expected, Tracker};
use super::{BenchArgs, Workload};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// An HTTP client with a connection for every request in flight.
pub fn client(args: &BenchArgs) -> anyhow::Result<reqwest::Client> {
    crate::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("--token: not a token")?;
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency as usize)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// The games a workload acts on: their ids, and for searches their titles.
#[derive(Debug, Default)]
pub struct Pool {
    ids: Vec<i64>,
    titles: Vec<String>,
}

/// One request of a workload; a search names the index of its title in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Create(u64),
    Update(i64, u64),
    Read(i64),
    List,
    Search(usize),
}

impl Request {
    /// The `index`th request of `workload`, acting on the games of `pool`.
    fn nth(workload: Workload, index: u64, pool: &Pool) -> Self {
        let game = |n: u64| pool.ids[(n % pool.ids.len() as u64) as usize];
        match workload {
            Workload::Create => Self::Create(index),
            Workload::Update => Self::Update(game(index), index),
            Workload::Read => Self::Read(game(index)),
            Workload::List => Self::List,
            Workload::Search => Self::Search((index % pool.titles.len() as u64) as usize),
            Workload::Mixed => match index % 10 {
                0 => Self::Create(index),
                1 => Self::Update(game(index / 10), index),
                2 | 3 => Self::List,
                _ => Self::Read(game(index)),
            },
        }
    }
}

/// The games a workload acts on: its updates go to distinct games (each event then
/// stands for one game), its reads and searches to existing ones (100 new ones in an
/// empty catalog).
pub async fn setup(client: &reqwest::Client, args: &BenchArgs) -> anyhow::Result<Pool> {
    let ids = match args.workload {
        Workload::Create | Workload::List => return Ok(Pool::default()),
        Workload::Update => create(client, args, args.count).await?,
        Workload::Mixed => create(client, args, args.count.div_ceil(10)).await?,
        Workload::Read | Workload::Search => {
            let mut games = existing_games(client, args).await?;
            if games.is_empty() {
                create(client, args, 100).await?;
                games = existing_games(client, args).await?;
            }
            return Ok(Pool {
                ids: games.iter().map(|game| game.id).collect(),
                titles: games.into_iter().map(|game| game.title).collect(),
            });
        }
    };
    Ok(Pool {
        ids,
        titles: Vec::new(),
    })
}

/// Creates `created` games and waits until they are processed; their ids.
async fn create(
    client: &reqwest::Client,
    args: &BenchArgs,
    created: u64,
) -> anyhow::Result<Vec<i64>> {
    let setup = BenchArgs {
        workload: Workload::Create,
        count: created,
        rate: None,
        ..args.clone()
    };
    let tracker = Tracker::follow(&setup).await?;
    let sent = send(client, &setup, &Arc::default()).await;
    if let Some(error) = sent.errors.first() {
        bail!("the setup could not create its {created} games: {error}");
    }
    let events = tracker.wait(client, &setup, &sent.expected).await;
    if events.unfinished > 0 {
        bail!(
            "{} of the setup's {created} games were not processed within {:?}: are workers \
             running?",
            events.unfinished,
            args.wait_timeout
        );
    }
    Ok(sent
        .expected
        .iter()
        .map(|expected| expected.game_id)
        .collect())
}

/// A game of the catalog, as the list shows it.
#[derive(Deserialize)]
struct Listed {
    id: i64,
    title: String,
}

/// Up to 500 games of the catalog.
async fn existing_games(client: &reqwest::Client, args: &BenchArgs) -> anyhow::Result<Vec<Listed>> {
    #[derive(Deserialize)]
    struct Page {
        items: Vec<Listed>,
    }
    let page: Page = client
        .get(args.endpoint("/api/games?limit=500"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("reading the catalog's first page")?;
    Ok(page.items)
}

/// What the measured requests did.
#[derive(Debug)]
pub struct Sent {
    pub requests: u64,
    pub errors: ErrorLog,
    /// When the first request was due.
    pub started: Instant,
    /// From the first request's due time to the last answer.
    pub elapsed: Duration,
    /// Per request: due time to answer, microseconds.
    pub latency: Histogram,
    /// The events the writes caused, in no particular order.
    pub expected: Vec<Expected>,
}

#[derive(Default)]
struct Outcomes {
    errors: ErrorLog,
    latency: Histogram,
    expected: Vec<Expected>,
}

/// Sends the workload's requests, `--rate` a second or flat out, at most
/// `--concurrency` at once. Latency runs from when a request was due (on a schedule)
/// or sent (flat out), so a system that falls behind a rate is charged for it.
pub async fn send(client: &reqwest::Client, args: &BenchArgs, pool: &Arc<Pool>) -> Sent {
    let progress = bar(args.count, "requests");
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let run = format!("{:08x}", rand::random::<u32>());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.count {
        let scheduled = args
            .rate
            .map(|rate| start + Duration::from_secs_f64(index as f64 / f64::from(rate)));
        if let Some(due) = scheduled {
            tokio::time::sleep_until(due.into()).await;
        }
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let due = scheduled.unwrap_or_else(Instant::now);
        let request = Request::nth(args.workload, index, pool);
        let (client, url, run) = (client.clone(), args.url.clone(), run.clone());
        let (pool, outcomes, progress) = (pool.clone(), outcomes.clone(), progress.clone());
        tasks.spawn(async move {
            let result = perform(&client, url.as_str(), &run, &pool, request).await;
            let took = due.elapsed();
            let mut outcomes = outcomes.lock().expect("not poisoned");
            outcomes.latency.record(took);
            match result {
                Ok(Some(expected)) => outcomes.expected.push(expected),
                Ok(None) => {}
                Err(error) => outcomes.errors.add(format!("{error:#}")),
            }
            progress.inc(1);
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    progress.finish_and_clear();
    let elapsed = start.elapsed();
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("not poisoned"));
    Sent {
        requests: args.count,
        errors: outcomes.errors,
        started: start,
        elapsed,
        latency: outcomes.latency,
        expected: outcomes.expected,
    }
}

/// The fields of a written game that say which event to wait for.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Written {
    id: i64,
    version: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// Sends one request; for a write, the event it caused.
async fn perform(
    client: &reqwest::Client,
    base: &str,
    run: &str,
    pool: &Pool,
    request: Request,
) -> anyhow::Result<Option<Expected>> {
    let base = base.trim_end_matches('/');
    let game = |title: String| {
        serde_json::json!({
            "title": title, "platformId": 1, "genreId": 1,
            "developer": "retrocat bench", "releaseYear": 1990,
        })
    };
    let response = match request {
        Request::Create(index) => client
            .post(format!("{base}/api/games"))
            .json(&game(format!("Bench {run} {index}"))),
        Request::Update(id, index) => client
            .put(format!("{base}/api/games/{id}"))
            .json(&game(format!("Bench {run} {index} updated"))),
        Request::Read(id) => client.get(format!("{base}/api/games/{id}")),
        Request::List => client.get(format!("{base}/api/games?limit=50")),
        Request::Search(title) => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("search", &pool.titles[title])
                .append_pair("limit", "50")
                .finish();
            client.get(format!("{base}/api/games?{query}"))
        }
    }
    .send()
    .await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(match request {
        Request::Create(_) | Request::Update(..) => {
            let written: Written =
                serde_json::from_slice(&body).context("the answer to a write is not a game")?;
            let since = match request {
                Request::Create(_) => written.created_at,
                _ => written.updated_at,
            };
            Some(Expected {
                game_id: written.id,
                version: written.version,
                written_at: since,
            })
        }
        Request::Read(_) | Request::List | Request::Search(_) => None,
    })
}

/// A progress bar on standard error, drawn only on a terminal.
pub fn bar(length: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_sends_one_create_one_update_two_lists_and_six_reads_in_ten() {
        let pool = Pool {
            ids: vec![7, 8, 9],
            titles: Vec::new(),
        };
        let kinds: Vec<Request> = (0..10)
            .map(|index| Request::nth(Workload::Mixed, index, &pool))
            .collect();
        assert_eq!(kinds[0], Request::Create(0));
        assert_eq!(kinds[1], Request::Update(7, 1));
        assert_eq!(kinds.iter().filter(|r| **r == Request::List).count(), 2);
        let reads = kinds
            .iter()
            .filter(|r| matches!(r, Request::Read(_)))
            .count();
        assert_eq!(reads, 6);
        // The next ten requests update the next game of the pool.
        assert_eq!(
            Request::nth(Workload::Mixed, 11, &pool),
            Request::Update(8, 11)
        );
    }

    #[test]
    fn updates_go_to_distinct_games_while_the_pool_lasts() {
        let pool = Pool {
            ids: (100..110).collect(),
            titles: Vec::new(),
        };
        let games: std::collections::HashSet<i64> = (0..10)
            .map(|index| match Request::nth(Workload::Update, index, &pool) {
                Request::Update(id, _) => id,
                other => panic!("not an update: {other:?}"),
            })
            .collect();
        assert_eq!(games.len(), 10);
    }
}
