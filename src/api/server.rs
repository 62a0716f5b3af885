//! The HTTP server, under limits no client can lift: how many connections are served at
//! once, how long a client has to send a request's headers, and how long shutdown may
//! wait for the connections still open.
//!
//! hyper-util's server, where `axum::serve` has no timeouts: a client that opened a
//! connection and sent half a request (slowloris), or kept one alive and idle, held it
//! open for as long as it liked, and SIGTERM waited for it.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// The server's limits (`--max-connections`, `--header-read-timeout`,
/// `--shutdown-deadline`).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: u32,
    /// How long a client has to send a request's headers, from the moment the server
    /// waits for them: from the connection's start, and, on a connection kept alive,
    /// from the end of the previous response. So it is also how long such a connection
    /// may sit idle.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for the requests in progress before closing every
    /// connection still open.
    pub shutdown_deadline: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets the requests in progress
/// finish, for [`ServerLimits::shutdown_deadline`] at most.
pub async fn serve(listener: TcpListener, app: Router, limits: ServerLimits, shutdown: Shutdown) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1) as usize));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(%error, "cannot accept a connection; trying again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        // Handlers learn the peer's address (protected mode lets loopback in).
        let service = TowerToHyperService::new(app.clone().map_request(with_peer(peer)));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open at the shutdown deadline: closing them"
        );
    }
    connections.shutdown().await;
}

/// Puts the peer's address into each request, where axum's `ConnectInfo` finds it.
fn with_peer<B>(peer: SocketAddr) -> impl Fn(Request<B>) -> Request<B> + Clone {
    move |mut request| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }
}
