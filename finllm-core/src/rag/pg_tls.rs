//! TLS for the PostgreSQL store, with libpq's settings read from the connection string:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (the default) | when the server offers it | no |
//! | `require` | yes, or the connection fails | no, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | yes | signed by a CA in `sslrootcert` |
//! | `verify-full` | yes | as `verify-ca`, and issued for the host name connected to |
//!
//! `sslrootcert` is a PEM file of CA certificates; `sslcert` and `sslkey` are a PEM client
//! certificate (chain) and its key, for servers that authenticate clients by certificate. The
//! keys are libpq's, in either form of connection string (`postgresql://...?sslmode=verify-full
//! &sslrootcert=/etc/ssl/bank-ca.pem` or `host=db sslmode=verify-full sslrootcert=...`), so one
//! string works with `psql` and with finllm. Other keys go to the PostgreSQL client unchanged.
//!
//! The TLS stack is rustls with the *ring* provider, given to each connection rather than
//! installed process-wide, so it never clashes with another TLS user in the bank's process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(Error::invalid(
                    "sslmode",
                    "allow (plain first, TLS on refusal) is not supported: use prefer or require",
                ))
            }
            other => {
                return Err(Error::invalid(
                    "sslmode",
                    format!("{other:?}: use disable, prefer, require, verify-ca or verify-full"),
                ))
            }
        })
    }

    /// What the PostgreSQL client is told: it only knows whether TLS is off, tried or required.
    fn client_mode(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Split `url` into its TLS settings and the connection string for the PostgreSQL client
/// (the same string without `sslrootcert`, `sslcert` and `sslkey`, and with `sslmode` in the
/// client's terms).
pub fn split_connection_string(url: &str) -> Result<(TlsSettings, String)> {
    let (mut pairs, rebuild): (Vec<(String, String)>, Rebuild) = if let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    {
        let scheme_len = url.len() - rest.len();
        let (base, query) = match rest.split_once('?') {
            Some((b, q)) => (&url[..scheme_len + b.len()], q),
            None => (url, ""),
        };
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Ok((percent_decode(k)?, percent_decode(v)?))
            })
            .collect::<Result<_>>()?;
        (pairs, Rebuild::Url(base.to_string()))
    } else {
        (parse_key_values(url)?, Rebuild::KeyValue)
    };
    let mut take = |key: &str| -> Option<String> {
        let mut found = None;
        pairs.retain(|(k, v)| {
            if k == key {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    };
    let mode = match take("sslmode") {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    let path = |v: Option<String>| v.filter(|p| !p.is_empty()).map(PathBuf::from);
    let settings = TlsSettings {
        mode,
        root_cert: path(take("sslrootcert")),
        client_cert: path(take("sslcert")),
        client_key: path(take("sslkey")),
    };
    pairs.push(("sslmode".into(), mode.client_mode().into()));
    let rest = match rebuild {
        Rebuild::Url(base) => {
            let query: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        Rebuild::KeyValue => pairs
            .iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" "),
    };
    Ok((settings, rest))
}

enum Rebuild {
    Url(String),
    KeyValue,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::invalid("connection string", reason)
}

/// `key=value` pairs separated by spaces; a value may be single-quoted with `\'` and `\\`
/// escapes (libpq's key/value form).
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(format!("{key:?} has no value (key=value expected)")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad(format!("the value of {key:?} has no closing quote"))),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| bad("a string ends in \\"))?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| bad("a string ends in \\"))?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad percent escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("{s:?} decodes to invalid UTF-8")))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(what, format!("{}: {e}", path.display()))
}

/// The rustls client configuration for `settings`; `None` when TLS is off.
pub fn client_config(settings: &TlsSettings) -> Result<Option<ClientConfig>> {
    if settings.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &settings.root_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| read_error("sslrootcert", path, e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| read_error("sslrootcert", path, e))?;
            for cert in certs {
                roots.add(cert).map_err(|e| read_error("sslrootcert", path, e))?;
            }
            if roots.is_empty() {
                return Err(read_error("sslrootcert", path, "holds no certificate"));
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let webpki = |roots: &Arc<RootCertStore>| {
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| Error::invalid("sslrootcert", e.to_string()))
    };
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, &roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(Error::invalid(
                "sslrootcert",
                "sslmode=verify-ca and verify-full need sslrootcert=<PEM file of the CA certificates>",
            ))
        }
        (SslMode::VerifyFull, Some(roots)) => webpki(roots)?,
        (_, Some(roots)) => Arc::new(Verifier {
            chain: Some(webpki(roots)?),
            algorithms,
        }),
        (_, None) => Arc::new(Verifier {
            chain: None,
            algorithms,
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("tls", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.client_cert, &settings.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| read_error("sslcert", cert, e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| read_error("sslcert", cert, e))?;
            if chain.is_empty() {
                return Err(read_error("sslcert", cert, "holds no certificate"));
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| read_error("sslkey", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| read_error("sslkey", key, e))?
        }
        _ => {
            return Err(Error::invalid(
                "sslcert",
                "a client certificate needs both sslcert and sslkey",
            ))
        }
    };
    Ok(Some(config))
}

/// Open a session: plain when `tls` is `None`, else through rustls with those settings.
pub(crate) fn connect(
    pg: &postgres::Config,
    tls: Option<&ClientConfig>,
) -> std::result::Result<Client, postgres::Error> {
    match tls {
        None => pg.connect(NoTls),
        Some(tls) => pg.connect(MakeRustlsConnect::new(tls.clone())),
    }
}

/// `e` with its causes (the client's own text omits them: "error performing TLS handshake"
/// alone would not say that the certificate names another host).
pub(crate) fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The session's TLS version as the server reports it (`pg_stat_ssl`); `None` when plain.
pub(crate) fn session_tls(c: &mut Client) -> std::result::Result<Option<String>, postgres::Error> {
    let row = c.query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])?;
    let (ssl, version): (bool, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
    Ok(ssl.then(|| version.unwrap_or_default()))
}

/// Checks the server's certificate as the mode says: not at all for `prefer` and `require`
/// without a CA file (libpq's behaviour: encrypted, not authenticated), the chain only for
/// `verify-ca` (and `require` with a CA file), chain and host name for `verify-full` (plain
/// webpki, not this type). The handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    /// The CA check; `None`: the certificate is not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name, so a name error means the chain passed.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_come_out_of_both_forms_and_the_rest_stays() {
        let (tls, rest) = split_connection_string(
            "postgresql://u:p%40ss@db.bank:5433/risk?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20file.pem",
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca file.pem")));
        assert_eq!(
            rest,
            "postgresql://u:p%40ss@db.bank:5433/risk?application_name=x&sslmode=require"
        );

        let (tls, rest) = split_connection_string(
            "host=db.bank  port = 5433 sslmode=verify-ca sslrootcert='/etc/it\\'s ca.pem' sslcert=/c.pem sslkey=/k.pem user=risk",
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/it's ca.pem")));
        assert_eq!(tls.client_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(tls.client_key.as_deref(), Some(Path::new("/k.pem")));
        assert_eq!(rest, "host='db.bank' port='5433' user='risk' sslmode='require'");
        // The rewritten strings are what the PostgreSQL client accepts.
        for s in [rest.as_str(), "postgresql://u@h/db?sslmode=prefer"] {
            s.parse::<postgres::Config>().unwrap();
        }

        let (tls, rest) = split_connection_string("postgresql://u@h/db").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(rest, "postgresql://u@h/db?sslmode=prefer");
        assert_eq!(
            split_connection_string("host=h sslmode=disable").unwrap().0.mode,
            SslMode::Disable
        );
    }

    #[test]
    fn bad_tls_settings_are_typed_errors() {
        for s in [
            "host=h sslmode=allow",
            "host=h sslmode=verify",
            "host=h sslrootcert='/never closed",
            "host=h sslmode",
            "postgresql://h/db?sslmode=%ZZ",
            "postgresql://h/db?sslrootcert=%FF",
        ] {
            assert!(
                matches!(split_connection_string(s), Err(Error::InvalidArgument { .. })),
                "{s}"
            );
        }
        let settings = |mode, root: Option<&str>, cert: Option<&str>, key: Option<&str>| TlsSettings {
            mode,
            root_cert: root.map(PathBuf::from),
            client_cert: cert.map(PathBuf::from),
            client_key: key.map(PathBuf::from),
        };
        let dir = std::env::temp_dir().join(format!("finllm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let g = garbage.to_str();
        for s in [
            settings(SslMode::VerifyFull, None, None, None),
            settings(SslMode::VerifyCa, None, None, None),
            settings(SslMode::VerifyFull, Some("/no/such/ca.pem"), None, None),
            settings(SslMode::VerifyFull, g, None, None),
            settings(SslMode::Require, None, Some("/no/such/cert.pem"), None),
            settings(SslMode::Require, None, g, g),
        ] {
            assert!(matches!(client_config(&s), Err(Error::InvalidArgument { .. })), "{s:?}");
        }
        assert!(client_config(&settings(SslMode::Disable, None, None, None))
            .unwrap()
            .is_none());
        assert!(client_config(&settings(SslMode::Require, None, None, None))
            .unwrap()
            .is_some());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The TLS server scripts/pg_server.py starts (Debian's PostgreSQL with OpenSSL, a
    /// certificate for `localhost` only) and its certificates. Missing, the test fails.
    fn tls_server() -> (String, PathBuf) {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: eval \"$(python3 scripts/pg_server.py start)\" (scripts/test.sh does)")
            })
        };
        let url = var("FINLLM_TEST_PG_TLS_URL");
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .unwrap()
            .to_string();
        (port, PathBuf::from(var("FINLLM_TEST_PG_TLS_DIR")))
    }

    /// Connect as the string says, through the same steps as the store; the session's TLS
    /// version, or the error's text.
    fn session(url: &str) -> std::result::Result<Option<String>, String> {
        let (tls, rest) = split_connection_string(url).map_err(|e| e.to_string())?;
        let config = client_config(&tls).map_err(|e| e.to_string())?;
        let mut pg: postgres::Config = rest.parse().map_err(|e: postgres::Error| e.to_string())?;
        pg.connect_timeout(std::time::Duration::from_secs(20));
        let mut c = connect(&pg, config.as_ref()).map_err(|e| describe(&e))?;
        session_tls(&mut c).map_err(|e| e.to_string())
    }

    /// Each `sslmode` against a real PostgreSQL with OpenSSL: what is encrypted, which
    /// certificates are accepted, and client certificates.
    #[test]
    fn sslmodes_against_a_real_tls_server() {
        let (port, dir) = tls_server();
        let f = |name: &str| dir.join(name).display().to_string();
        let url = |host: &str, user: &str, params: &str| {
            format!("host={host} port={port} user={user} dbname=postgres {params}")
        };
        let tls13 = Ok(Some("TLSv1.3".to_string()));
        // Plain, and the two unverified modes (libpq's: encrypted, certificate not checked).
        assert_eq!(session(&url("127.0.0.1", "postgres", "sslmode=disable")), Ok(None));
        assert_eq!(session(&url("127.0.0.1", "postgres", "")), tls13);
        assert_eq!(session(&url("127.0.0.1", "postgres", "sslmode=require")), tls13);
        // verify-full: the CA signed it and it names localhost.
        let ca = format!("sslrootcert='{}'", f("ca.crt"));
        assert_eq!(
            session(&url("localhost", "postgres", &format!("sslmode=verify-full {ca}"))),
            tls13
        );
        // ... but not 127.0.0.1, which verify-ca does not compare.
        let err = session(&url("127.0.0.1", "postgres", &format!("sslmode=verify-full {ca}"))).unwrap_err();
        assert!(err.contains("certificate") && err.contains("name"), "{err}");
        assert_eq!(
            session(&url("127.0.0.1", "postgres", &format!("sslmode=verify-ca {ca}"))),
            tls13
        );
        // A CA that signed nothing here: refused in every checking mode, require included
        // (with a root file, require checks the chain as libpq does).
        let other = format!("sslrootcert='{}'", f("other-ca.crt"));
        for mode in ["verify-full", "verify-ca", "require"] {
            let err = session(&url("localhost", "postgres", &format!("sslmode={mode} {other}"))).unwrap_err();
            assert!(err.contains("certificate"), "{mode}: {err}");
        }
        // The URL form reads the same settings.
        let u = format!(
            "postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            f("ca.crt").replace('/', "%2F")
        );
        assert_eq!(session(&u), tls13);
        // The certificate-only role: in with the client certificate, refused without it.
        let client = format!("sslcert='{}' sslkey='{}'", f("client.crt"), f("client.key"));
        assert_eq!(
            session(&url(
                "localhost",
                "finllm_mtls",
                &format!("sslmode=verify-full {ca} {client}")
            )),
            tls13
        );
        let err = session(&url("localhost", "finllm_mtls", &format!("sslmode=verify-full {ca}"))).unwrap_err();
        assert!(err.contains("certificate"), "{err}");
    }
}
