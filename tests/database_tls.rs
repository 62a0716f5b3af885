//! PostgreSQL over TLS: `sslmode` and `sslrootcert` in `DATABASE_URL` reach the
//! connection, so a server is verified against the CA the URL names.
//!
//! Uses the local server's own certificate (Debian's snakeoil, for `localhost`) as the
//! CA. Skipped without `TEST_POSTGRES_URL`, when that server is not on this machine, or
//! when it has no TLS.

mod common;

use common::Backend;
use common::processes::Deployment;
use std::path::Path;

/// The certificate Debian's PostgreSQL serves: self-signed, for `localhost`.
const SERVER_CERTIFICATE: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
/// CAs that did not sign it.
const OTHER_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[tokio::test]
async fn postgres_is_verified_against_the_ca_of_sslrootcert() {
    if std::env::var("TEST_POSTGRES_URL").is_err() {
        eprintln!("skipped: set TEST_POSTGRES_URL to run the PostgreSQL tests");
        return;
    }
    if !Path::new(SERVER_CERTIFICATE).exists() || !Path::new(OTHER_CAS).exists() {
        eprintln!("skipped: no {SERVER_CERTIFICATE} (the local server's certificate)");
        return;
    }
    let deployment = Deployment::on(Backend::Postgres).await;
    let mut url = url::Url::parse(deployment.database_url()).expect("a database URL");
    if !matches!(url.host_str(), Some("127.0.0.1" | "localhost")) {
        eprintln!("skipped: TEST_POSTGRES_URL names another machine, with another certificate");
        return;
    }
    url.set_host(Some("localhost")).expect("a host");
    let with_ca = |ca: &str| {
        let mut url = url.clone();
        url.query_pairs_mut()
            .append_pair("sslmode", "verify-full")
            .append_pair("sslrootcert", ca);
        url.to_string()
    };

    // A later value of a variable wins over the deployment's own.
    let deployment = deployment.with_env("DATABASE_URL", &with_ca(SERVER_CERTIFICATE));
    let verified = deployment.run_with_input("migrate", &[], "").await;
    let stderr = String::from_utf8_lossy(&verified.stderr);
    if stderr.contains("does not support TLS") || stderr.contains("SSL off") {
        eprintln!("skipped: the local PostgreSQL has no TLS ({stderr})");
        return;
    }
    assert!(verified.status.success(), "migrate over TLS: {stderr}");

    let deployment = deployment.with_env("DATABASE_URL", &with_ca(OTHER_CAS));
    let refused = deployment.run_with_input("migrate", &[], "").await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a server no CA of sslrootcert signed was accepted"
    );
    assert!(stderr.contains("certificate"), "says why: {stderr}");
}
