//! Every page of the web UI in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`), driven through chromedriver by fantoccini, against
//! `retrocat serve` started as an OS process. Each scenario clicks and types what a
//! person would, waits for what the page shows (live updates included, never a
//! reload), checks it against the API, and leaves a screenshot of the page in
//! `target/browser-screenshots/` for a look at how it renders.
//!
//! Most scenarios run on a fresh install from loopback, where protected mode lets the
//! pages do everything; one has accounts, and logs in through the page's dialog.
//!
//! Without chromedriver the tests say they were skipped; under CI (`CI` set) they fail
//! instead, since `.ci/run` installs it.

mod common;

use common::processes::{Deployment, Effects, Process, create_games, free_port, http_client};
use common::{Backend, eventually, flaky_cover_server, game_body, with};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// The longest any wait of a scenario may take.
const WAIT: Duration = Duration::from_secs(30);

/// The statuses the Processing page counts, in its order.
const STATUSES: [&str; 4] = ["pending", "processing", "completed", "failed"];

/// chromedriver on a free 127.0.0.1 port, and the Chromium it starts; all of them are
/// killed when this is dropped, also when the test panics.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it accepts sessions; `None` (the test is
    /// skipped) when it is not installed, unless under CI.
    async fn start() -> Option<Self> {
        let port = free_port();
        let spawned = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A process group of its own, which the Chromium it starts joins: Drop ends
            // them all with one signal.
            .process_group(0)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "chromedriver is not installed: .ci/run installs it \
                     (apt-get install chromium-driver)"
                );
                println!(
                    "skipped: chromedriver is not installed (apt-get install chromium-driver)"
                );
                return None;
            }
            Err(e) => panic!("cannot start chromedriver: {e}"),
        };
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let status = format!("{}/status", driver.url);
        eventually("chromedriver ready", WAIT, || async {
            let response = http_client().get(&status).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            (body["value"]["ready"] == true).then_some(())
        })
        .await;
        Some(driver)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The negative id names the process group: chromedriver and every Chromium
        // process, however the session ended.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session, with the few actions the scenarios need. Elements are
/// named by CSS selectors; a failed action panics with the selector.
struct Browser {
    client: Client,
    /// Dropped after the client: the session's processes outlive no test.
    _driver: Chromedriver,
}

impl Browser {
    /// A fresh headless Chromium, or `None` when the test is skipped.
    async fn start() -> Option<Self> {
        let driver = Chromedriver::start().await?;
        let capabilities = json!({
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"],
            },
        });
        // Plain HTTP to chromedriver on loopback: no TLS connector.
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&driver.url)
            .await
            .expect("a Chromium session");
        Some(Self {
            client,
            _driver: driver,
        })
    }

    async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The element `css`; panics when there is none.
    async fn find(&self, css: &str) -> Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    /// How many elements match `css` now.
    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find all {css}: {e}"))
            .len()
    }

    /// The text of `css` now; `None` while there is no such element, or while the page
    /// is replacing it (a live update re-renders rows and cards). The text as the page
    /// wrote it: WebDriver's rendered text would be upper-cased by the retro style.
    async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.prop("textContent").await.ok()?
    }

    /// The value of `attribute` of `css` now, as [`Browser::text`].
    async fn attr(&self, css: &str, attribute: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(attribute).await.ok()?
    }

    /// Waits until `css` shows `expected`.
    async fn wait_for_text(&self, css: &str, expected: &str) {
        eventually(&format!("{css} shows {expected:?}"), WAIT, || async {
            (self.text(css).await.as_deref() == Some(expected)).then_some(())
        })
        .await;
    }

    /// Waits until `css` shows some text containing `part`, and returns it.
    async fn wait_for_text_containing(&self, css: &str, part: &str) -> String {
        eventually(&format!("{css} shows {part:?}"), WAIT, || async {
            self.text(css).await.filter(|text| text.contains(part))
        })
        .await
    }

    /// Whether some element matching `css` is on screen now: there, and not hidden
    /// (the pages hide what the caller's role may not use).
    async fn shown(&self, css: &str) -> bool {
        let Ok(elements) = self.client.find_all(Locator::Css(css)).await else {
            return false;
        };
        for element in elements {
            if element.is_displayed().await.unwrap_or(false) {
                return true;
            }
        }
        false
    }

    /// Waits until the element `css` is on screen, as a person waits to see a control
    /// before using it (a page shows its controls once it knows the caller's role).
    async fn find_shown(&self, css: &str) -> Element {
        eventually(&format!("{css} shown"), WAIT, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.is_displayed().await.ok()?.then_some(element)
        })
        .await
    }

    /// Waits until `css` is shown (`true`) or not (`false`).
    async fn wait_until_shown(&self, css: &str, shown: bool) {
        let state = if shown { "shown" } else { "hidden" };
        eventually(&format!("{css} {state}"), WAIT, || async {
            (self.shown(css).await == shown).then_some(())
        })
        .await;
    }

    /// Clicks `css` once it is shown; again if the page redrew it between finding and
    /// clicking (tables redrawn by polling replace their buttons every few seconds).
    async fn click(&self, css: &str) {
        eventually(&format!("click {css}"), WAIT, || async {
            self.find_shown(css).await.click().await.ok()
        })
        .await;
    }

    /// Replaces what the field `css` holds with `value`, typed.
    async fn fill(&self, css: &str, value: &str) {
        let field = self.find_shown(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        field
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// The text of the `confirm()` a click opened, once it is open.
    async fn dialog_text(&self) -> String {
        eventually("a dialog to read", WAIT, || async {
            self.client.get_alert_text().await.ok()
        })
        .await
    }

    /// Accepts the `confirm()` a click opened, once it is open.
    async fn accept_dialog(&self) {
        eventually("a dialog to accept", WAIT, || async {
            self.client.accept_alert().await.ok()
        })
        .await;
    }

    /// Saves what the window shows as `target/browser-screenshots/NAME.png`, kept by CI
    /// with `target/`.
    async fn screenshot(&self, name: &str) {
        // The test binary's target directory (wherever CARGO_TARGET_DIR put it) holds
        // the binary under test: target/debug/retrocat.
        let dir: PathBuf = std::path::Path::new(env!("CARGO_BIN_EXE_retrocat"))
            .ancestors()
            .nth(2)
            .expect("the target directory")
            .join("browser-screenshots");
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        // A window as tall as the page, so the screenshot shows all of it (the charts
        // of the Queues page are below the fold of 1000 pixels).
        let (width, height) = self.client.get_window_size().await.expect("window size");
        let extra = self
            .client
            .execute(
                "return document.documentElement.scrollHeight - window.innerHeight",
                vec![],
            )
            .await
            .expect("the page's height");
        let extra = extra.as_u64().unwrap_or(0);
        self.client
            .set_window_size(width as u32, (height + extra) as u32)
            .await
            .expect("resize the window");
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
    }

    /// The login token the page keeps in `sessionStorage`, if any.
    async fn kept_token(&self) -> Option<String> {
        let token = self
            .client
            .execute("return sessionStorage.getItem('retrocat.token')", vec![])
            .await
            .expect("read sessionStorage");
        token.as_str().map(str::to_owned)
    }

    /// Ends the session, which closes Chromium; the guard ends chromedriver.
    async fn quit(self) {
        self.client.close().await.expect("end the session");
    }
}

/// `retrocat serve` on SQLite with `args`, answering HTTP on a free port.
async fn serve(deployment: &Deployment, args: &[&str]) -> Process {
    deployment
        .start_http("serve", "serve", free_port(), args)
        .await
}

/// `retrocat user add NAME --role ROLE --password-stdin` on the deployment's database,
/// as an operator would run it beside the server.
async fn add_user(deployment: &Deployment, name: &str, role: &str, password: &str) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
        .args(["user", "add", name, "--role", role, "--password-stdin"])
        .env_remove("RABBITMQ_URL")
        .env("DATABASE_URL", deployment.database_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start retrocat user add");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .expect("write the password");
    drop(stdin);
    let output = child.wait_with_output().await.expect("retrocat user add");
    assert!(
        output.status.success(),
        "retrocat user add {name} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fills the open login dialog and submits it.
async fn submit_login(browser: &Browser, username: &str, password: &str) {
    browser
        .fill("#login-dialog [name=username]", username)
        .await;
    browser
        .fill("#login-dialog [name=password]", password)
        .await;
    browser.click("#login-dialog button[type=submit]").await;
}

/// Fills the Catalog page's open editor with a game called `title` from `year`, and
/// saves it.
async fn submit_game_form(browser: &Browser, title: &str, year: &str) {
    browser.fill("#game-form [name=title]", title).await;
    browser.select("#form-platform", "1").await;
    browser.select("#form-genre", "1").await;
    browser
        .fill("#game-form [name=developer]", "Browser Studio")
        .await;
    browser.fill("#game-form [name=releaseYear]", year).await;
    browser.click("#game-form button[type=submit]").await;
}

/// The games the API lists whose title is `title`.
async fn games_titled(serve: &Process, title: &str) -> Vec<Value> {
    let search: String = form_urlencoded::byte_serialize(title.as_bytes()).collect();
    let games = serve.get_json(&format!("/api/games?search={search}")).await;
    games
        .as_array()
        .unwrap()
        .iter()
        .filter(|game| game["title"] == title)
        .cloned()
        .collect()
}

/// Waits until the API says game `id` is `status`.
async fn wait_for_status(serve: &Process, id: i64, status: &str) {
    eventually(&format!("game {id} {status}"), WAIT, || async {
        let game = serve.get_json(&format!("/api/games/{id}")).await;
        (game["processingStatus"] == status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_adds_edits_and_deletes_a_game_showing_its_status_live() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let deployment = Deployment::on(Backend::Sqlite).await;
    // Processing takes a second: long enough to see the game pending first.
    let serve = serve(&deployment, &["--simulate-work", "1s"]).await;
    browser.open(&serve.url("/")).await;
    // The live feed is connected before the write whose processing it must show.
    browser.wait_for_text("#live", "live").await;
    browser
        .client
        .execute("window.notReloaded = true", vec![])
        .await
        .unwrap();

    // Added: the card shows up pending, then turns completed by itself.
    browser.click("#add-game").await;
    submit_game_form(&browser, "Browser Quest", "1991").await;
    let (id, first) = eventually("the new game's card", WAIT, || async {
        let game = games_titled(&serve, "Browser Quest").await.pop()?;
        let id = game["id"].as_i64().unwrap();
        let card = format!(".game[data-id=\"{id}\"]");
        browser.text(&format!("{card} h3")).await?;
        Some((id, browser.text(&format!("{card} .status-badge")).await?))
    })
    .await;
    assert!(
        first == "pending" || first == "processing",
        "a new game is not processed yet, but {first}"
    );
    let card = format!(".game[data-id=\"{id}\"]");
    let badge = format!("{card} .status-badge");
    browser.wait_for_text(&badge, "completed").await;
    let not_reloaded = browser
        .client
        .execute("return window.notReloaded === true", vec![])
        .await
        .unwrap();
    assert_eq!(not_reloaded, json!(true), "the page was reloaded");

    // Edited: the card shows the new title and year.
    browser
        .click(&format!("{card} button[data-action=edit]"))
        .await;
    browser
        .wait_for_text("#editor-title", "Edit Browser Quest")
        .await;
    submit_game_form(&browser, "Browser Quest II", "1993").await;
    browser
        .wait_for_text(&format!("{card} h3"), "Browser Quest II")
        .await;
    browser
        .wait_for_text_containing(&format!("{card} .meta"), "1993")
        .await;

    // Deleted, once confirmed: the card goes, and so does the game.
    browser
        .click(&format!("{card} button[data-action=delete]"))
        .await;
    browser.accept_dialog().await;
    eventually("the card removed", WAIT, || async {
        (browser.count(&card).await == 0).then_some(())
    })
    .await;
    let gone = http_client()
        .get(serve.url(&format!("/api/games/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "the deleted game is still there");

    // A release year before any video game: the error shows beside the field, and
    // nothing is created.
    browser.click("#add-game").await;
    submit_game_form(&browser, "Too Early", "1800").await;
    let error = browser
        .wait_for_text_containing(
            "#game-form [name=releaseYear] + [data-field-error=releaseYear]",
            "1950",
        )
        .await;
    assert!(error.starts_with("must be between"), "{error}");
    assert_eq!(
        browser.count("#editor.hidden").await,
        0,
        "the editor stays open with the error"
    );
    assert_eq!(games_titled(&serve, "Too Early").await, Vec::<Value>::new());
    browser.screenshot("catalog").await;
    browser.quit().await;
    serve.stop().await;
}

/// The counters the Processing page shows, by status; `None` until all four show a
/// number.
async fn counters_shown(browser: &Browser) -> Option<BTreeMap<&'static str, u64>> {
    let mut shown = BTreeMap::new();
    for status in STATUSES {
        let css = format!("#counters span[data-status=\"{status}\"]");
        shown.insert(status, browser.text(&css).await?.parse().ok()?);
    }
    Some(shown)
}

/// Waits until the Processing page's counters equal `GET /api/tasks/counts` and the
/// number of games `GET /api/games?status=` lists for each status; returns them.
async fn wait_for_counters_to_match(
    browser: &Browser,
    serve: &Process,
) -> BTreeMap<&'static str, u64> {
    eventually("the counters match the database", WAIT, || async {
        let shown = counters_shown(browser).await?;
        let counts = serve.get_json("/api/tasks/counts").await;
        let mut listed = BTreeMap::new();
        for status in STATUSES {
            let games = serve.get_json(&format!("/api/games?status={status}")).await;
            listed.insert(status, games.as_array().unwrap().len() as u64);
        }
        let counted: BTreeMap<_, _> = STATUSES
            .into_iter()
            .map(|status| (status, counts[status].as_u64().unwrap()))
            .collect();
        (shown == counted && shown == listed).then_some(shown)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_counts_the_catalog_and_replayed_dead_letters_are_processed() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let deployment = Deployment::on(Backend::Sqlite).await;
    // One attempt: the first failed fetch of the cover dead-letters its event.
    let serve = serve(
        &deployment,
        &["--allow-private-fetch", "--max-attempts", "1"],
    )
    .await;
    let healthy = Arc::new(AtomicBool::new(false));
    let cover = flaky_cover_server(healthy.clone()).await;
    let created = http_client()
        .post(serve.url("/api/games"))
        .json(&with(game_body("Replayed"), "imageUrl", json!(cover)))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    wait_for_status(&serve, id, "failed").await;
    let dead_letter = eventually("the game's dead letter", WAIT, || async {
        let listed = serve.get_json("/api/dlq").await;
        listed.as_array().unwrap().iter().find_map(|dead| {
            let body: Value = serde_json::from_str(dead["body"].as_str()?).ok()?;
            (body["gameId"] == id).then(|| dead["id"].as_str().unwrap().to_owned())
        })
    })
    .await;

    browser.open(&serve.url("/processing")).await;
    let shown = wait_for_counters_to_match(&browser, &serve).await;
    assert_eq!(shown["failed"], 1, "{shown:?}");

    // The cover is back: replayed from the panel, the event is processed.
    healthy.store(true, Ordering::SeqCst);
    let row = format!("#dlq tr[data-id=\"{dead_letter}\"]");
    browser
        .click(&format!("{row} button[data-action=replay]"))
        .await;
    browser
        .wait_for_text(
            &format!("#tasks tr[data-id=\"{id}\"] .status-badge"),
            "completed",
        )
        .await;
    wait_for_status(&serve, id, "completed").await;
    assert_eq!(
        browser.count(&row).await,
        0,
        "the dead letter is still listed"
    );
    let shown = wait_for_counters_to_match(&browser, &serve).await;
    assert_eq!(shown["failed"], 0, "{shown:?}");

    // Three more die while the host is down again. "Replay all…" with a reason counts
    // them, asks, and replays them.
    healthy.store(false, Ordering::SeqCst);
    let mut more = Vec::new();
    for n in 0..3 {
        let body = with(game_body(&format!("Outage {n}")), "imageUrl", json!(cover));
        more.push(serve.create_game(&body).await["id"].as_i64().unwrap());
    }
    for &id in &more {
        wait_for_status(&serve, id, "failed").await;
    }
    healthy.store(true, Ordering::SeqCst);
    browser.fill("#dlq-reason", "503").await;
    browser.click("#dlq-replay-all").await;
    let asked = browser.dialog_text().await;
    assert!(asked.contains("Replay 3 dead letters"), "{asked}");
    browser.accept_dialog().await;
    browser
        .wait_for_text_containing("#dlq-progress", "Replayed 3")
        .await;
    for &id in &more {
        wait_for_status(&serve, id, "completed").await;
    }

    // The tasks view, filtered by title and status, then sorted.
    browser.fill("#task-search", "Outage 1").await;
    browser.select("#task-status", "completed").await;
    eventually("the tasks filtered", WAIT, || async {
        let rows = browser.count("#tasks tr").await;
        let shown = browser.text("#tasks tr").await?;
        (rows == 1 && shown.contains("Outage 1")).then_some(())
    })
    .await;
    // By title, the first row is the first title; reversed, the last.
    browser.fill("#task-search", "Outage").await;
    browser.select("#task-status", "").await;
    for (order, first_title) in [("title", "Outage 0"), ("-title", "Outage 2")] {
        browser.select("#task-sort", order).await;
        eventually(&format!("the tasks in {order} order"), WAIT, || async {
            let rows = browser.count("#tasks tr").await;
            let first = browser.text("#tasks tr").await?;
            (rows == 3 && first.contains(first_title)).then_some(())
        })
        .await;
    }
    browser.screenshot("processing").await;
    browser.quit().await;
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_from_the_producer_page_shows_as_received() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let deployment = Deployment::on(Backend::Sqlite).await;
    let serve = serve(&deployment, &[]).await;
    browser.open(&serve.url("/producer")).await;
    browser
        .fill(
            "#custom-form [name=message]",
            r#"{"note": "sent by the browser suite"}"#,
        )
        .await;
    browser.click("#custom-form button[type=submit]").await;
    browser.wait_for_text_containing("#sent", "confirmed").await;

    // The custom-message consumer recorded it, and the page lists what the API does.
    let row = browser
        .wait_for_text_containing("#received tr", "sent by the browser suite")
        .await;
    let received = serve.get_json("/api/messages/received").await;
    let message_id = received[0]["messageId"].as_str().unwrap();
    assert!(row.contains(message_id), "{row} is not {received}");
    browser.screenshot("producer").await;
    browser.quit().await;
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_page_charts_processing_and_pauses_and_resumes_game_events() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let deployment = Deployment::on(Backend::Sqlite).await;
    let serve = serve(&deployment, &[]).await;
    browser.open(&serve.url("/queues")).await;
    browser
        .wait_for_text("tbody#queues tr[data-queue=game_events] td", "game_events")
        .await;

    let ids = create_games(serve.base(), "Charted", 20, 4, &AtomicUsize::new(0)).await;
    Effects::open(&deployment)
        .await
        .wait_until_completed(&ids, WAIT)
        .await;
    // Each chart says how many samples it drew once it has drawn them.
    for chart in ["chart-depth", "chart-processed", "chart-latency"] {
        eventually(&format!("#{chart} drawn"), WAIT, || async {
            let points = browser.attr(&format!("#{chart}"), "data-points").await?;
            (points.parse::<u64>().ok()? > 0).then_some(())
        })
        .await;
    }

    // Paused from the page, game_events holds what is created meanwhile; resumed, the
    // workers take it.
    let row = "tbody#queues tr[data-queue=game_events]";
    browser
        .click(&format!("{row} button[data-action=pause]"))
        .await;
    browser
        .wait_for_text(&format!("{row} button[data-action=resume]"), "Resume")
        .await;
    assert_eq!(
        browser.attr(row, "data-paused").await.as_deref(),
        Some("true")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = create_games(serve.base(), "Held", 5, 4, &AtomicUsize::new(0)).await;
    browser
        .wait_for_text(&format!("{row} td:nth-child(2)"), "5")
        .await;
    let effects = Effects::open(&deployment).await;
    assert_eq!(
        effects.unfinished(&held).await,
        held,
        "processed while paused"
    );
    browser.screenshot("queues-paused").await;
    browser
        .click(&format!("{row} button[data-action=resume]"))
        .await;
    effects.wait_until_completed(&held, WAIT).await;
    browser
        .wait_for_text(&format!("{row} button[data-action=pause]"), "Pause")
        .await;
    browser.screenshot("queues").await;
    browser.quit().await;
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_logs_in_to_change_the_catalog_and_a_refused_write_asks_to_log_in() {
    const PASSWORD: &str = "correct horse battery";
    let Some(browser) = Browser::start().await else {
        return;
    };
    let deployment = Deployment::on(Backend::Sqlite).await;
    let serve = serve(&deployment, &[]).await;
    // Made while the install is fresh (loopback may write); then an account ends that.
    let existing = serve.create_game(&game_body("Already Here")).await;
    let existing = format!(".game[data-id=\"{}\"]", existing["id"]);
    add_user(&deployment, "edith", "editor", PASSWORD).await;
    eventually("the server asks for a login", WAIT, || async {
        let me = serve.get_json("/api/auth/me").await;
        (me["loginRequired"] == true).then_some(())
    })
    .await;

    // Logged out: the dead letters are admin's to read, and the page says so quietly,
    // without asking to log in.
    browser.open(&serve.url("/processing")).await;
    browser
        .wait_for_text("#dlq td", "Log in as an admin to see the dead letters.")
        .await;
    browser.wait_until_shown("#log-in", true).await;
    assert!(
        !browser.shown("#login-dialog").await,
        "a background read asked to log in"
    );

    // The catalog shows no control to change it.
    browser.open(&serve.url("/")).await;
    browser.wait_until_shown("#log-in", true).await;
    browser
        .wait_for_text(&format!("{existing} h3"), "Already Here")
        .await;
    for control in [
        "#add-game".to_owned(),
        format!("{existing} [data-action=edit]"),
        format!("{existing} [data-action=delete]"),
    ] {
        assert!(
            !browser.shown(&control).await,
            "{control} is shown logged out"
        );
    }

    // A wrong password: the dialog says what the server said, and stays open.
    browser.click("#log-in").await;
    browser.wait_until_shown("#login-dialog", true).await;
    submit_login(&browser, "edith", "not the password").await;
    browser
        .wait_for_text("#login-error", "wrong username or password")
        .await;
    browser.screenshot("login-wrong-password").await;
    assert!(
        browser.kept_token().await.is_none(),
        "a refused login kept a token"
    );

    // The right one: logged in as an editor, the catalog's controls are there.
    submit_login(&browser, "edith", PASSWORD).await;
    browser.wait_until_shown("#login-dialog", false).await;
    browser
        .wait_for_text("#account-name", "edith (editor)")
        .await;
    browser.wait_until_shown("#add-game", true).await;
    browser
        .wait_until_shown(&format!("{existing} [data-action=edit]"), true)
        .await;
    browser.click("#add-game").await;
    submit_game_form(&browser, "Logged In Quest", "1994").await;
    let created = eventually("the new game's card", WAIT, || async {
        let game = games_titled(&serve, "Logged In Quest").await.pop()?;
        let card = format!(".game[data-id=\"{}\"]", game["id"]);
        browser.text(&format!("{card} h3")).await?;
        Some(card)
    })
    .await;
    browser.wait_until_shown("#editor", false).await;
    browser.screenshot("catalog-as-editor").await;

    // An editor is no admin: the producer's forms give way to a notice, and what holds
    // message bodies stays closed.
    browser.open(&serve.url("/producer")).await;
    browser
        .wait_for_text("#account-name", "edith (editor)")
        .await;
    browser.wait_until_shown("#producer-locked", true).await;
    assert!(!browser.shown("#custom-form").await, "an editor may send");
    assert!(!browser.shown("#event-form").await, "an editor may send");
    browser
        .wait_for_text_containing("#received td", "log in as an admin")
        .await;
    browser
        .wait_for_text_containing("#audit td", "log in as an admin")
        .await;
    browser.screenshot("producer-as-editor").await;

    // The login ends on the server (revoked, expired) while the page still shows the
    // controls: the refused delete asks to log in again, and deletes nothing.
    browser.open(&serve.url("/")).await;
    browser
        .wait_until_shown(&format!("{created} [data-action=delete]"), true)
        .await;
    let token = browser.kept_token().await.expect("the login's token");
    let ended = http_client()
        .post(serve.url("/api/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 204);
    browser
        .click(&format!("{created} [data-action=delete]"))
        .await;
    browser.accept_dialog().await;
    browser.wait_until_shown("#login-dialog", true).await;
    browser
        .wait_for_text_containing("#login-reason", "Your login has ended")
        .await;
    browser.wait_until_shown("#add-game", false).await;
    assert!(
        browser.kept_token().await.is_none(),
        "the ended token is kept"
    );
    let username = browser
        .find("#login-dialog [name=username]")
        .await
        .prop("value")
        .await
        .unwrap();
    assert_eq!(username.as_deref(), Some("edith"), "who to log in again as");
    assert_eq!(games_titled(&serve, "Logged In Quest").await.len(), 1);
    browser.screenshot("login-after-refused-write").await;

    // Logged in again from there, then out: the controls come and go with the login.
    submit_login(&browser, "edith", PASSWORD).await;
    browser.wait_until_shown("#login-dialog", false).await;
    browser.wait_until_shown("#add-game", true).await;
    let token = browser.kept_token().await.expect("the new login's token");
    browser.click("#log-out").await;
    browser.wait_until_shown("#log-in", true).await;
    browser.wait_until_shown("#add-game", false).await;
    assert!(
        !browser
            .shown(&format!("{created} [data-action=delete]"))
            .await,
        "the delete button outlived the login"
    );
    assert!(
        browser.kept_token().await.is_none(),
        "a token outlived the logout"
    );
    let me = http_client()
        .get(serve.url("/api/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the logged-out token still works");
    browser.quit().await;
    serve.stop().await;
}
