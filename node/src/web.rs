//! Browsers: WebTransport (HTTP/3) on a UDP port of its own, and the page that speaks it,
//! served over HTTP on the same port number in TCP.
//!
//! A browser session is served by the same code as a native connection (`connection.rs`):
//! its first bidirectional stream is the control stream, then one per room, carrying the
//! same frames; only the handshake differs (`connection::open_session`).
//!
//! Certificates: a node given `--cert` serves it to browsers too, which must then trust it
//! as they would any web server's. Otherwise the node makes its own short-lived ECDSA P-256
//! certificates, which a page accepts by their SHA-256 (`serverCertificateHashes`):
//! Chromium takes those only when valid for at most 14 days, so the node keeps two, the
//! one it serves and the next, and moves on to the next halfway through the first's life.
//! The page fetches both hashes from [`SESSION_INFO_PATH`] before every connect, so a
//! rotation or a restarted node is picked up by a reconnect.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use chat_certs::PinnedCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::http::{Handler, Response};

/// The path of the WebTransport session a page opens.
pub(crate) const SESSION_PATH: &str = "/chat";
/// Where the page reads how to connect: the certificate hashes to accept.
pub(crate) const SESSION_INFO_PATH: &str = "/session.json";
/// The ALPN of HTTP/3, which WebTransport rides on.
const H3_ALPN: &[u8] = b"h3";

/// Datagrams a browser may have buffered at the node: WebTransport over HTTP/3 must
/// offer datagrams, but the chat reads none, so they are kept to one packet's worth.
pub(crate) const DATAGRAM_BUFFER: usize = 1500;

/// How often the node checks whether its browser certificate is due to move on.
const ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// The page and its script, built from `web/src` into `web/dist` (README.md, "In a browser").
const INDEX_HTML: &[u8] = include_bytes!("../../web/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../../web/dist/app.js");

/// The browser side of a node: its WebTransport endpoint and its page's listener.
pub(crate) struct Web {
    pub endpoint: quinn::Endpoint,
    pub page: TcpListener,
    /// The page's TLS, for a listener off loopback (a browser allows WebTransport only from
    /// a secure context: `localhost`, or a page loaded over HTTPS).
    pub page_tls: Option<tokio_rustls::TlsAcceptor>,
    /// The node's own certificates for browsers; `None` when it serves a given certificate.
    pub pinned: Option<Arc<PinnedCerts>>,
}

/// The certificates browsers pin: the one served and the next.
pub(crate) struct PinnedCerts {
    names: Vec<String>,
    ips: Vec<IpAddr>,
    keys: RwLock<(Pinned, Pinned)>,
}

struct Pinned {
    cert: PinnedCert,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for PinnedCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCerts").field("names", &self.names).finish_non_exhaustive()
    }
}

impl PinnedCerts {
    fn new(names: Vec<String>, ips: Vec<IpAddr>) -> anyhow::Result<Self> {
        let now = SystemTime::now();
        let current = pinned(&names, &ips, now)?;
        let next = pinned(&names, &ips, now + chat_certs::PINNED_LIFETIME / 2)?;
        Ok(Self { names, ips, keys: RwLock::new((current, next)) })
    }

    /// The hashes a page may accept: the certificate served now, then the next one.
    pub(crate) fn hashes(&self) -> [[u8; 32]; 2] {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        [keys.0.cert.sha256, keys.1.cert.sha256]
    }

    /// Moves on to the next certificate once the one served is halfway through its life,
    /// and makes the one after it. A page given both hashes before the move still connects
    /// after it.
    fn rotate(&self, now: SystemTime) -> anyhow::Result<bool> {
        let due = {
            let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            now >= keys.0.cert.not_before + chat_certs::PINNED_LIFETIME / 2
        };
        if !due {
            return Ok(false);
        }
        let after = pinned(&self.names, &self.ips, now + chat_certs::PINNED_LIFETIME / 2)?;
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = std::mem::replace(&mut keys.1, after);
        keys.0 = next;
        Ok(true)
    }
}

impl ResolvesServerCert for PinnedCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(Arc::clone(&keys.0.key))
    }
}

fn pinned(names: &[String], ips: &[IpAddr], from: SystemTime) -> anyhow::Result<Pinned> {
    let cert = chat_certs::pinned_cert(names, ips, from)?;
    let key = CertifiedKey::from_der(
        vec![cert.cert.clone()],
        cert.key.clone_key(),
        &chat_certs::provider(),
    )?;
    Ok(Pinned { cert, key: Arc::new(key) })
}

/// Binds the WebTransport endpoint (UDP) and the page's listener (TCP) on `addr`.
/// `given` is the node's configured certificate and key, if it has one; `native_tls` the
/// native endpoint's configuration, whose certificate the page's HTTPS uses off loopback.
pub(crate) async fn bind(
    addr: SocketAddr,
    given: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    native_tls: &rustls::ServerConfig,
    transport: quinn::TransportConfig,
    endpoint_config: quinn::EndpointConfig,
) -> anyhow::Result<Web> {
    let socket = std::net::UdpSocket::bind(addr)
        .with_context(|| format!("binding UDP {addr} for WebTransport"))?;
    let addr = socket.local_addr()?;
    let page = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding TCP {addr} for the browser page"))?;
    let builder = rustls::ServerConfig::builder_with_provider(chat_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth();
    let (mut tls, pinned) = match given {
        Some((cert, key)) => {
            let chain = chat_certs::load_certs(cert)?;
            (builder.with_single_cert(chain, chat_certs::load_key(key)?)?, None)
        }
        None => {
            let names = vec!["localhost".to_owned()];
            let pinned = Arc::new(PinnedCerts::new(names, ips_for(addr))?);
            (builder.with_cert_resolver(Arc::clone(&pinned) as _), Some(pinned))
        }
    };
    tls.alpn_protocols = vec![H3_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    crate::no_address_tokens(&mut server);
    let endpoint =
        quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))?;
    let page_tls = if addr.ip().is_loopback() {
        None
    } else {
        let mut page_config = native_tls.clone();
        page_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(page_config)))
    };
    let scheme = if page_tls.is_some() { "https" } else { "http" };
    info!(%addr, "serving browsers: open {scheme}://{}/ (WebTransport on UDP {addr})", page_host(addr));
    Ok(Web { endpoint, page, page_tls, pinned })
}

/// The host a browser on this machine reaches `addr` by.
fn page_host(addr: SocketAddr) -> String {
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn ips_for(addr: SocketAddr) -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
    if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
        ips.push(addr.ip());
    }
    ips
}

/// Answers the page's requests: the page, its script, and how to connect to `addr`.
pub(crate) fn page(addr: SocketAddr, pinned: Option<Arc<PinnedCerts>>) -> Handler {
    Arc::new(move |path| match path {
        "/" | "/index.html" => {
            Response { cache: "no-cache", ..Response::ok("text/html; charset=utf-8", INDEX_HTML) }
        }
        "/app.js" => Response { cache: "no-cache", ..Response::ok("text/javascript", APP_JS) },
        SESSION_INFO_PATH => {
            Response::ok("application/json", session_info(addr, pinned.as_deref()))
        }
        "/favicon.ico" => Response { status: "204 No Content", ..Response::ok("image/x-icon", "") },
        _ => Response::not_found("the chat is at /\n"),
    })
}

/// `{"host": "127.0.0.1", "port": 7701, "path": "/chat", "hashes": [[32 bytes], [32 bytes]]}`.
/// The host is the address the node listens on, unless that is every address (then the
/// page uses the host it was loaded from, `null` here): a browser tries `localhost` on IPv6
/// first, and unlike TCP, WebTransport does not fall back to IPv4. No hashes for a given
/// certificate, which the browser checks as it would any site's.
fn session_info(addr: SocketAddr, pinned: Option<&PinnedCerts>) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "null".to_owned(),
        IpAddr::V4(ip) => format!("\"{ip}\""),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    let hashes = pinned.map(|pinned| pinned.hashes().to_vec()).unwrap_or_default();
    let hashes: Vec<String> = hashes
        .iter()
        .map(|hash| {
            let bytes: Vec<String> = hash.iter().map(u8::to_string).collect();
            format!("[{}]", bytes.join(","))
        })
        .collect();
    format!(
        "{{\"host\":{host},\"port\":{},\"path\":\"{SESSION_PATH}\",\"hashes\":[{}]}}",
        addr.port(),
        hashes.join(",")
    )
}

/// Moves the browser certificate on when it is due, for as long as the node runs.
pub(crate) async fn rotate(pinned: Arc<PinnedCerts>) {
    let mut tick = tokio::time::interval(ROTATION_CHECK);
    loop {
        tick.tick().await;
        match pinned.rotate(SystemTime::now()) {
            Ok(true) => {
                info!(hashes = ?pinned.hashes().map(|h| chat_certs::fingerprint(&h)), "moved on to the next browser certificate")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "could not make the next browser certificate; keeping the current one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_serves_the_next_certificate_and_makes_another() {
        let certs = PinnedCerts::new(vec!["localhost".into()], vec![]).expect("certificates");
        let [served, next] = certs.hashes();
        assert!(!certs.rotate(SystemTime::now()).expect("no rotation"));
        let later = SystemTime::now() + chat_certs::PINNED_LIFETIME / 2;
        assert!(certs.rotate(later).expect("a rotation"));
        let [now_served, after] = certs.hashes();
        assert_eq!(now_served, next, "the next certificate is served");
        assert_ne!(after, served);
        assert_ne!(after, next);
    }

    #[test]
    fn every_pinned_certificate_is_within_what_chromium_takes() {
        let certs = PinnedCerts::new(vec!["localhost".into()], vec![]).expect("certificates");
        let keys = certs.keys.read().expect("lock");
        for pinned in [&keys.0, &keys.1] {
            let life = pinned.cert.not_after.duration_since(pinned.cert.not_before).expect("order");
            assert!(life < Duration::from_secs(14 * 86_400), "{life:?}");
        }
        // The next one is valid from before the served one's halfway point.
        assert!(keys.1.cert.not_before <= keys.0.cert.not_before + chat_certs::PINNED_LIFETIME / 2);
    }

    #[test]
    fn the_session_info_lists_both_hashes() {
        let certs = PinnedCerts::new(vec!["localhost".into()], vec![]).expect("certificates");
        let loopback = "127.0.0.1:7701".parse().expect("addr");
        let info = session_info(loopback, Some(&certs));
        let [a, _] = certs.hashes();
        let head = "{\"host\":\"127.0.0.1\",\"port\":7701,\"path\":\"/chat\",\"hashes\":[[";
        assert!(info.starts_with(head), "{info}");
        assert!(info.contains(&format!("[{}", a[0])));
        let everywhere = "[::]:7701".parse().expect("addr");
        let expected = "{\"host\":null,\"port\":7701,\"path\":\"/chat\",\"hashes\":[]}";
        assert_eq!(session_info(everywhere, None), expected);
    }
}
