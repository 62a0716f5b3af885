//! Who may do what: every route of the API, for each kind of caller, gets the expected
//! answer, and a refused request changes nothing.
//!
//! The requests go through the real router, on the real store and broker of a running
//! system, with the peer's address set as the server sets it (`ConnectInfo`), so that a
//! peer off loopback can be played from this machine.

mod common;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use common::{Backend, TestApp, game_body, on_every_backend, png, test_args};
use retrocat::api::{self, ApiContext, stream::LiveFeed};
use retrocat::auth::Role;
use retrocat::broker::{dead_letters, topology};
use retrocat::shutdown::Shutdown;
use retrocat::storage::GameQuery;
use retrocat::telemetry::queues::QueueWatch;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tower::ServiceExt;

/// What a route needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// Nothing: a public read (or logging in).
    Nobody,
    /// A token, whatever its role (logging out).
    Token,
    /// Nothing, but a token given must be valid (who am I).
    ValidTokenIfAny,
    Role(Role),
}

/// One operation of the API, with a concrete request for it.
struct Route {
    method: &'static str,
    /// The path as the OpenAPI document names it.
    template: &'static str,
    path: String,
    body: Option<(&'static str, Vec<u8>)>,
    needs: Needs,
}

fn route(method: &'static str, template: &'static str, needs: Needs) -> Route {
    Route {
        method,
        template,
        path: template.replace("{id}", "1"),
        body: None,
        needs,
    }
}

impl Route {
    fn at(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    fn json(mut self, body: Value) -> Self {
        self.body = Some(("application/json", body.to_string().into_bytes()));
        self
    }
}

/// Every operation of the API.
fn routes() -> Vec<Route> {
    use Needs::{Nobody, Role as R};
    let editor = R(Role::Editor);
    let admin = R(Role::Admin);
    let game = game_body("Guarded Quest");
    vec![
        route("get", "/api/games", Nobody),
        route("post", "/api/games", editor).json(game.clone()),
        route("get", "/api/games/{id}", Nobody),
        route("put", "/api/games/{id}", editor).json(game),
        route("delete", "/api/games/{id}", editor).at("/api/games/2"),
        route("put", "/api/games/{id}/process-complete", admin)
            .json(json!({"status": "completed"})),
        Route {
            body: Some(("image/png", png(8, 8))),
            ..route("put", "/api/games/{id}/cover", editor)
        },
        route("get", "/api/games/{id}/thumbnail", Nobody),
        route("get", "/api/games/{id}/history", Nobody),
        route("get", "/api/platforms", Nobody),
        route("post", "/api/platforms", admin).json(json!({"name": "Guarded Box"})),
        route("put", "/api/platforms/{id}", admin).json(json!({"name": "Renamed Box"})),
        route("delete", "/api/platforms/{id}", admin).at("/api/platforms/999"),
        route("get", "/api/genres", Nobody),
        route("post", "/api/genres", admin).json(json!({"name": "Guarded Genre"})),
        route("put", "/api/genres/{id}", admin).json(json!({"name": "Renamed Genre"})),
        route("delete", "/api/genres/{id}", admin).at("/api/genres/999"),
        route("get", "/api/processing", Nobody),
        route("get", "/api/tasks", Nobody),
        route("get", "/api/tasks/counts", Nobody),
        route("get", "/api/stream", Nobody),
        route("post", "/api/messages/game-event", admin)
            .json(json!({"gameId": 1, "action": "created"})),
        route("post", "/api/messages/custom", admin).json(json!({"message": "hello"})),
        route("post", "/api/messages", admin).json(json!({"message": {"hello": 1}})),
        route("get", "/api/messages/received", admin),
        route("get", "/api/audit", admin),
        route("get", "/api/dlq", admin),
        route("post", "/api/dlq/{id}/replay", admin),
        route("delete", "/api/dlq/{id}", admin),
        route("get", "/api/dlq/count", admin),
        route("post", "/api/dlq/replay", admin),
        route("delete", "/api/dlq", admin),
        route("get", "/api/queues", Nobody),
        route("get", "/api/queues/history", Nobody),
        route("post", "/api/queues/{name}/pause", admin).at("/api/queues/audit/pause"),
        route("post", "/api/queues/{name}/resume", admin).at("/api/queues/audit/resume"),
        route("post", "/api/auth/login", Nobody)
            .json(json!({"username": "nobody", "password": "not a password"})),
        route("get", "/api/auth/me", Needs::ValidTokenIfAny),
        route("get", "/metrics", Nobody),
        route("get", "/health", Nobody),
        route("get", "/healthz", Nobody),
        route("get", "/readyz", Nobody),
        route("get", "/openapi.json", Nobody),
        // Last: it ends an editor's session.
        route("post", "/api/auth/logout", Needs::Token),
    ]
}

/// The callers of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// No token, from loopback, while no account exists.
    LoopbackFresh,
    /// No token, from another host, while no account exists.
    RemoteFresh,
    /// No token, from loopback, once an account exists.
    LoopbackWithAccounts,
    Editor,
    Admin,
    Expired,
    Revoked,
}

/// What `caller` gets from a route that needs `needs`: allowed, or refused with this
/// status.
fn expected(caller: Caller, needs: Needs) -> Option<StatusCode> {
    use Caller::*;
    match (needs, caller) {
        (Needs::Nobody, _) => None,
        (Needs::ValidTokenIfAny, Expired | Revoked) => Some(StatusCode::UNAUTHORIZED),
        (Needs::ValidTokenIfAny, _) => None,
        (Needs::Token, Editor) => None,
        (Needs::Token, Admin) => Some(StatusCode::FORBIDDEN),
        (Needs::Token, _) => Some(StatusCode::UNAUTHORIZED),
        (Needs::Role(_), LoopbackFresh | Admin) => None,
        (Needs::Role(Role::Editor), Editor) => None,
        (Needs::Role(Role::Admin), Editor) => Some(StatusCode::FORBIDDEN),
        (Needs::Role(_), RemoteFresh | LoopbackWithAccounts | Expired | Revoked) => {
            Some(StatusCode::UNAUTHORIZED)
        }
    }
}

const LOOPBACK: &str = "127.0.0.1:50000";
const REMOTE: &str = "192.0.2.10:50000";

struct Table {
    app: TestApp,
    router: Router,
    tokens: Vec<(Caller, String)>,
}

impl Table {
    async fn call(&self, route: &Route, caller: Caller) -> (StatusCode, Value) {
        let peer: SocketAddr = match caller {
            Caller::RemoteFresh => REMOTE.parse().unwrap(),
            _ => LOOPBACK.parse().unwrap(),
        };
        let method = route.method.to_uppercase();
        let mut request = Request::builder()
            .method(method.as_str())
            .uri(&route.path)
            .header(header::HOST, "127.0.0.1:8080")
            .extension(ConnectInfo(peer));
        if let Some((_, token)) = self.tokens.iter().find(|(holder, _)| *holder == caller) {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match &route.body {
            Some((kind, bytes)) => {
                request = request.header(header::CONTENT_TYPE, *kind);
                Body::from(bytes.clone())
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let challenged = response.headers().contains_key(header::WWW_AUTHENTICATE);
        assert_eq!(
            challenged,
            status == StatusCode::UNAUTHORIZED,
            "{method} {}: a 401, and only a 401, says how to authenticate",
            route.path
        );
        if route.template == "/api/stream" {
            return (status, Value::Null);
        }
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Every route for `caller`: those it may not call first, checking that they
    /// change nothing, then those it may.
    async fn run(&self, caller: Caller) {
        let routes = routes();
        let (refused, allowed): (Vec<_>, Vec<_>) = routes
            .iter()
            .partition(|route| expected(caller, route.needs).is_some());
        self.settle().await;
        let before = self.state().await;
        for route in refused {
            let (status, body) = self.call(route, caller).await;
            let want = expected(caller, route.needs).unwrap();
            assert_eq!(
                status, want,
                "{caller:?}: {} {} answered {body}",
                route.method, route.path
            );
            assert!(
                body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{body}"
            );
        }
        self.settle().await;
        assert_eq!(
            self.state().await,
            before,
            "{caller:?}: a refusal changed something"
        );
        for route in allowed {
            let (status, body) = self.call(route, caller).await;
            let refused = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];
            let login = route.template == "/api/auth/login";
            assert!(
                !refused.contains(&status) || (login && status == StatusCode::UNAUTHORIZED),
                "{caller:?}: {} {} answered {status} {body}",
                route.method,
                route.path
            );
        }
    }

    /// Waits until the events and custom messages sent so far are consumed.
    async fn settle(&self) {
        self.app.wait_until_idle().await;
        let limit = Duration::from_secs(10);
        common::eventually("custom messages consumed", limit, || async {
            let depth = self.app.broker().queue_depth(topology::CUSTOM_QUEUE).await;
            (depth.unwrap() == 0).then_some(())
        })
        .await;
    }

    /// What a refused request could have changed: the catalog, what subscribers
    /// received, the outbox and the dead letters.
    async fn state(&self) -> Value {
        let store = self.app.store();
        let page = store.list_games(&GameQuery::default()).await.unwrap();
        let dead = dead_letters::list(self.app.broker(), topology::GAME_EVENTS_DLQ, 1000)
            .await
            .unwrap();
        json!({
            "games": serde_json::to_value(page).unwrap(),
            "platforms": serde_json::to_value(store.platforms().await.unwrap()).unwrap(),
            "genres": serde_json::to_value(store.genres().await.unwrap()).unwrap(),
            "audit": store.received("audit", 1000).await.unwrap().len(),
            "custom": store.received("custom", 1000).await.unwrap().len(),
            "outbox": store.outbox_backlog().await.unwrap().pending,
            "deadLetters": dead.len(),
        })
    }
}

async fn table() -> Table {
    table_on(Backend::Sqlite).await
}

async fn table_on(backend: Backend) -> Table {
    let app = TestApp::spawn_on(backend).await;
    for title in ["Guarded One", "Guarded Two"] {
        app.create_game(&game_body(title)).await;
    }
    let (store, broker) = (app.parts.store.clone(), app.parts.broker.clone());
    let ctx = ApiContext::new(
        store.clone(),
        broker.clone(),
        LiveFeed::new(10),
        QueueWatch::new(store, broker, None),
        Shutdown::new(),
    );
    let router = api::router(ctx, &test_args(&[]).http.router());
    Table {
        app,
        router,
        tokens: Vec::new(),
    }
}

#[tokio::test]
async fn every_route_answers_each_caller_as_its_role_allows_and_refusals_change_nothing() {
    let mut table = table().await;
    // While no account exists: loopback may do everything, another host nothing.
    table.run(Caller::RemoteFresh).await;
    table.run(Caller::LoopbackFresh).await;
    let (status, body) = table
        .call(
            &route("post", "/api/platforms", Needs::Nobody),
            Caller::RemoteFresh,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("retrocat user add NAME --role admin"),
        "{detail}"
    );

    // The first account ends protected mode.
    let store = table.app.store();
    let hash = retrocat::auth::password::hash("editor password".into()).await;
    store.add_user("edith", Role::Editor, &hash).await.unwrap();
    let login = route("post", "/api/auth/login", Needs::Nobody)
        .json(json!({"username": "edith", "password": "editor password"}));
    let (status, session) = table.call(&login, Caller::RemoteFresh).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["role"], "editor");
    let admin = common::add_token(&table.app, "ops", Role::Admin, None).await;
    let past = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    let expired = common::add_token(&table.app, "old", Role::Admin, Some(past)).await;
    let revoked = common::add_token(&table.app, "gone", Role::Admin, None).await;
    assert!(store.revoke_token("gone").await.unwrap());
    table.tokens = vec![
        (
            Caller::Editor,
            session["token"].as_str().unwrap().to_owned(),
        ),
        (Caller::Admin, admin),
        (Caller::Expired, expired),
        (Caller::Revoked, revoked),
    ];
    // Protected mode's answer is reused for a second at most.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for caller in [
        Caller::LoopbackWithAccounts,
        Caller::Expired,
        Caller::Revoked,
        Caller::Editor,
        Caller::Admin,
    ] {
        table.run(caller).await;
    }
    table.app.stop().await;
}

#[tokio::test]
async fn the_table_covers_every_documented_operation_and_its_security() {
    let document = serde_json::to_value(api::openapi::document()).unwrap();
    let routes = routes();
    let mut documented = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented += 1;
            let route = routes
                .iter()
                .find(|route| route.template == path && route.method == method)
                .unwrap_or_else(|| panic!("{method} {path} is not in the table"));
            let secured = operation.get("security").is_some();
            assert_eq!(
                secured,
                matches!(route.needs, Needs::Token | Needs::Role(_)),
                "{method} {path}: the document and the table disagree on who may call it"
            );
        }
    }
    assert_eq!(
        documented,
        routes.len(),
        "the table lists an undocumented route"
    );
}

on_every_backend!(accounts_tokens_and_sessions_are_kept_in_the_catalog_database);

/// Logging in and out, tokens and users, as the database keeps them.
async fn accounts_tokens_and_sessions_are_kept_in_the_catalog_database(backend: Backend) {
    let table = table_on(backend).await;
    let store = table.app.parts.store.clone();
    assert!(!store.has_accounts().await.unwrap(), "a fresh install");
    let machine = common::add_token(&table.app, "ops", Role::Editor, None).await;
    assert!(
        store.has_accounts().await.unwrap(),
        "a token ends protected mode"
    );
    let tokens = store.tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        (tokens[0].name.as_str(), tokens[0].role),
        ("ops", Role::Editor)
    );
    let record = store.token(&retrocat::auth::token::digest(&machine)).await;
    assert_eq!(record.unwrap().unwrap().name, "ops");
    assert!(store.revoke_token("ops").await.unwrap());
    assert!(store.tokens().await.unwrap().is_empty());
    assert!(
        !store.has_accounts().await.unwrap(),
        "protected mode is back"
    );
    let hash = retrocat::auth::password::hash("admin password".into()).await;
    store.add_user("ada", Role::Admin, &hash).await.unwrap();
    let login = |password: &str| {
        route("post", "/api/auth/login", Needs::Nobody)
            .json(json!({"username": "ada", "password": password}))
    };
    let (status, body) = table
        .call(&login("wrong password"), Caller::RemoteFresh)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, session) = table
        .call(&login("admin password"), Caller::RemoteFresh)
        .await;
    assert_eq!(status, StatusCode::OK);
    let secret = session["token"].as_str().unwrap().to_owned();
    let with_session = Table {
        tokens: vec![(Caller::Admin, secret)],
        ..table
    };
    let me = route("get", "/api/auth/me", Needs::Nobody);
    let (_, identity) = with_session.call(&me, Caller::Admin).await;
    assert_eq!(
        identity,
        json!({"name": "ada", "role": "admin", "loginRequired": false})
    );
    let logout = route("post", "/api/auth/logout", Needs::Token);
    let (status, _) = with_session.call(&logout, Caller::Admin).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = with_session.call(&me, Caller::Admin).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the session ended");

    let (status, _) = with_session
        .call(&login("admin password"), Caller::RemoteFresh)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(store.remove_user("ada").await.unwrap());
    let (status, _) = with_session
        .call(&login("admin password"), Caller::RemoteFresh)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(store.users().await.unwrap().is_empty());
    with_session.app.stop().await;
}

/// `retrocat user …` and `retrocat token …` against a running system, as an operator
/// uses them: the first account ends protected mode, tokens carry their role, and a
/// revoked token or a removed user stops working at once.
#[tokio::test]
async fn accounts_and_tokens_made_on_the_command_line_govern_a_running_system() {
    use common::processes::{Deployment, free_port, http_client};
    let deployment = Deployment::on(Backend::Sqlite).await;
    let api = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let client = http_client();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = client.post(api.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let platform = |name: &str| json!({"name": name});
    assert_eq!(
        post("/api/platforms", None, platform("Open Box")).await,
        201
    );

    let add = |name: &str, password: &str| {
        let input = format!("{password}\n");
        let name = name.to_owned();
        let deployment = &deployment;
        async move {
            let args = ["add", name.as_str(), "--role", "admin", "--password-stdin"];
            deployment.run_with_input("user", &args, &input).await
        }
    };
    let short = add("alice", "short").await;
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8"));
    assert!(add("alice", "alice's password").await.status.success());
    let again = add("alice", "another password").await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Protected mode ends within a second.
    common::eventually("protected mode ended", Duration::from_secs(5), || async {
        (post("/api/platforms", None, platform("Late Box")).await == 401).then_some(())
    })
    .await;
    let login = client
        .post(api.url("/api/auth/login"))
        .json(&json!({"username": "alice", "password": "alice's password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let session: Value = login.json().await.unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    assert_eq!(
        post("/api/platforms", Some(&session), platform("Admin Box")).await,
        201
    );

    let created = deployment
        .output("token", &["create", "--name", "ci", "--role", "editor"])
        .await;
    let ci = created.trim();
    assert!(ci.starts_with("rc_"), "{created}");
    let listed = deployment.output("token", &["list"]).await;
    assert!(listed.contains("ci") && listed.contains("editor") && listed.contains("never"));
    assert!(!listed.contains(ci), "a token is shown once, at creation");
    assert_eq!(
        post("/api/games", Some(ci), game_body("CI Quest")).await,
        201
    );
    assert_eq!(
        post("/api/platforms", Some(ci), platform("CI Box")).await,
        403
    );

    // A token revoked elsewhere stops working within a second.
    deployment.output("token", &["revoke", "ci"]).await;
    common::eventually(
        "the revoked token refused",
        Duration::from_secs(5),
        || async {
            (post("/api/games", Some(ci), game_body("Revoked")).await == 401).then_some(())
        },
    )
    .await;
    let twice = deployment
        .run_with_input("token", &["revoke", "ci"], "")
        .await;
    assert!(String::from_utf8_lossy(&twice.stderr).contains("no token named"));

    let users = deployment.output("user", &["list"]).await;
    assert!(
        users.contains("alice") && users.contains("admin"),
        "{users}"
    );
    deployment.output("user", &["remove", "alice"]).await;
    common::eventually(
        "the removed user's login refused",
        Duration::from_secs(5),
        || async {
            (post("/api/platforms", Some(&session), platform("Gone")).await == 401).then_some(())
        },
    )
    .await;
    api.stop().await;
}
