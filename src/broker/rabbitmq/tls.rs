//! TLS to RabbitMQ, for `amqps://` nodes: the server's certificate is verified against
//! the system's roots and, with `--rabbitmq-ca`, the CA that file holds; a client
//! certificate is optional.

use std::path::Path;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files TLS is configured with, as the flags name them.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFiles<'a> {
    /// CA certificates (PEM) to trust beside the system's.
    pub ca: Option<&'a Path>,
    /// A client certificate chain (PEM) and its key (PEM), for servers that ask.
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
}

impl TlsFiles<'_> {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }

    /// Reads and checks the files: a file that is missing or holds no certificate (or
    /// key) is refused here, with its flag's name, rather than at the first connect.
    pub fn load(&self) -> Result<OwnedTLSConfig, String> {
        let cert_chain = self
            .ca
            .map(|path| read_certificates("--rabbitmq-ca", path))
            .transpose()?;
        let identity = match (self.client_cert, self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read_certificates("--rabbitmq-client-cert", cert)?.into_bytes(),
                key: read_key(key)?,
            }),
            _ => {
                return Err(
                    "--rabbitmq-client-cert and --rabbitmq-client-key go together: \
                     give both, or neither"
                        .into(),
                );
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{flag} {}: {error}", path.display()))
}

/// The PEM text of `path`, which must hold at least one certificate.
fn read_certificates(flag: &str, path: &Path) -> Result<String, String> {
    let pem = read(flag, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{flag} {}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    String::from_utf8(pem).map_err(|_| format!("{flag} {}: not PEM text", path.display()))
}

fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let flag = "--rabbitmq-client-key";
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| {
        format!(
            "{flag} {}: no PEM private key in it ({error})",
            path.display()
        )
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_or_key_is_refused_by_its_flag() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");

        let ca = TlsFiles {
            ca: Some(&text),
            ..TlsFiles::default()
        };
        assert!(ca.load().unwrap_err().starts_with("--rabbitmq-ca "));
        let absent = TlsFiles {
            ca: Some(&missing),
            ..TlsFiles::default()
        };
        assert!(absent.load().unwrap_err().contains("missing.pem"));
        let half = TlsFiles {
            client_cert: Some(&text),
            ..TlsFiles::default()
        };
        assert!(half.load().unwrap_err().contains("go together"));
    }
}
