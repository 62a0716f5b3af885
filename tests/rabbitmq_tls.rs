//! `amqps://` against a RabbitMQ node with a TLS listener that this test configures,
//! with certificates it makes (openssl): the server is verified, against
//! `--rabbitmq-ca`; a client certificate is optional, and one no CA vouches for is
//! refused.
//!
//! Starts its own node (`retrocat-tls@localhost`, AMQP on 5691, TLS on 5692) with
//! `scripts/rabbitmq-node`, and stops it at the end. Skipped without
//! `TEST_RABBITMQ_URL`, or without `openssl` and `rabbitmq-server`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::rabbitmq::rabbitmqctl_on;
use retrocat::broker::rabbitmq::{Nodes, RabbitMqBroker, TlsFiles};
use retrocat::broker::{Broker, BrokerError, Message, Properties, Publish, QueueSpec, QueueType};
use tempfile::TempDir;

const NODE: &str = "retrocat-tls@localhost";
const URL: &str = "amqps://guest:guest@localhost:5692/%2f";

#[tokio::test]
async fn amqps_verifies_the_server_and_presents_a_client_certificate_if_given() {
    let Some(node) = TlsNode::start() else { return };
    let certs = node.certs.path();
    let ca = certs.join("ca.pem");

    // Server verification is on by default: a CA the system does not know is refused.
    let refused = connect(TlsFiles::default()).await.err().expect("refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");

    // With the CA: a message goes through, and the connection is TLS.
    let broker = connect(TlsFiles {
        ca: Some(&ca),
        ..TlsFiles::default()
    })
    .await
    .expect("connect with the CA");
    let queue = format!("tls-test-{}", uuid::Uuid::now_v7().simple());
    broker
        .declare_queue(&QueueSpec::exclusive(&queue))
        .await
        .expect("declare");
    let message = Message {
        body: bytes::Bytes::from_static(b"{\"over\":\"tls\"}"),
        properties: Properties::default(),
    };
    broker
        .publish(vec![Publish::to_queue(&queue, message)])
        .await
        .expect("publish over TLS");
    assert_eq!(broker.queue_depth(&queue).await.expect("depth"), 1);
    assert!(connections(&["ssl"]).contains("true"));
    broker.close().await.expect("close");

    // A client certificate the node's CA signed is presented and accepted.
    let (cert, key) = (certs.join("client.pem"), certs.join("client.key"));
    let broker = connect(TlsFiles {
        ca: Some(&ca),
        client_cert: Some(&cert),
        client_key: Some(&key),
    })
    .await
    .expect("connect with a client certificate");
    assert!(
        connections(&["peer_cert_subject"]).contains("CN=retrocat-client"),
        "the node saw the client certificate"
    );
    broker.close().await.expect("close");

    // One signed by a CA the node does not know is refused.
    let (cert, key) = (certs.join("rogue.pem"), certs.join("rogue.key"));
    let rogue = connect(TlsFiles {
        ca: Some(&ca),
        client_cert: Some(&cert),
        client_key: Some(&key),
    })
    .await;
    // Under TLS 1.3 the server's refusal comes after the client's handshake is done:
    // as the certificate alert, or as the connection reset that follows it.
    let refused = rogue.err().expect("a rogue client certificate was refused");
    let reason = refused.to_string();
    assert!(
        reason.contains("BadCertificate") || reason.contains("Connection reset"),
        "{reason}"
    );
}

async fn connect(files: TlsFiles<'_>) -> Result<RabbitMqBroker, BrokerError> {
    let nodes: Nodes = URL.parse().expect("the node's URL");
    let nodes = nodes.with_tls(files).expect("TLS files");
    RabbitMqBroker::connect(nodes, QueueType::Classic).await
}

/// The node's client connections, with the columns `items`.
fn connections(items: &[&str]) -> String {
    let args = [&["list_connections", "-q"], items].concat();
    rabbitmqctl_on(Some(NODE), &args).expect("list connections")
}

/// The node with its TLS listener, stopped on drop, and the certificates it trusts.
struct TlsNode {
    certs: TempDir,
}

impl TlsNode {
    fn start() -> Option<Self> {
        if std::env::var("TEST_RABBITMQ_URL").is_err() {
            eprintln!("skipped: set TEST_RABBITMQ_URL to run the RabbitMQ tests");
            return None;
        }
        for tool in ["openssl", "rabbitmq-server"] {
            let found = Command::new("which").arg(tool).output();
            if !found.is_ok_and(|output| output.status.success()) {
                eprintln!("skipped: {tool} is not installed (needed for a TLS node)");
                return None;
            }
        }
        // A node left by an interrupted run holds other certificates.
        stop_node();
        let certs = TempDir::new().expect("a directory for the certificates");
        make_certificates(certs.path());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-node");
        let short = NODE.split('@').next().expect("a node name");
        let output = Command::new(script)
            .args([short, "5691"])
            .env("TLS_PORT", "5692")
            .env("TLS_DIR", certs.path())
            .output()
            .expect("run scripts/rabbitmq-node");
        let node = Self { certs };
        assert!(
            output.status.success(),
            "the TLS node did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(node)
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        stop_node();
    }
}

/// Stops the node, if it runs, and deletes its data.
fn stop_node() {
    let _ = rabbitmqctl_on(Some(NODE), &["stop"]);
    let _ = std::fs::remove_dir_all(Path::new("/var/tmp/retrocat-rabbitmq/retrocat-tls"));
}

/// A CA; a server certificate it signs for localhost and 127.0.0.1; a client
/// certificate it signs; and a rogue client certificate, self-signed.
fn make_certificates(dir: &Path) {
    let path = |name: &str| -> PathBuf { dir.join(name) };
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let self_signed = |name: &str, subject: &str| {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            subject,
        ]);
    };
    self_signed("ca", "/CN=retrocat test CA");
    self_signed("rogue", "/CN=retrocat-client");
    for (name, subject, extensions) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "/CN=retrocat-client",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(path(&format!("{name}.ext")), extensions).expect("write extensions");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}
