//! A scriptable OAuth authorization server for tests: RFC 7662 introspection at `/introspect` and a
//! userinfo endpoint at `/userinfo`, over HTTP or HTTPS (a test CA made with rcgen), with
//! configurable latency, forced statuses and bodies, and a request counter.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const CLIENT_ID: &str = "sipward-rs";
pub const CLIENT_SECRET: &str = "rs-secret-5c1e";

/// What the server answers, besides the token table.
#[derive(Clone, Default)]
pub struct Script {
    pub latency: Duration,
    /// Answer this status with `body` (or an empty JSON object) whatever the token.
    pub status: Option<u16>,
    pub body: Option<String>,
}

#[derive(Default)]
pub struct State {
    /// token → JSON claims of an active token (introspection adds `"active":true`).
    pub tokens: Mutex<HashMap<String, serde_json::Value>>,
    pub script: Mutex<Script>,
    pub requests: AtomicUsize,
    /// Every client authentication seen: "basic", "post" or "none".
    pub client_auth: Mutex<Vec<&'static str>>,
}

pub struct MockAs {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    /// PEM of the CA that signed the HTTPS certificate (for `ca_file`), when serving HTTPS.
    pub ca_pem: Option<String>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MockAs {
    pub fn http() -> MockAs {
        MockAs::start("127.0.0.1:0".parse().unwrap(), false)
    }

    pub fn https() -> MockAs {
        MockAs::start("127.0.0.1:0".parse().unwrap(), true)
    }

    /// Serves on `addr` (a fixed port, to bring a "dead" host back).
    pub fn start(addr: SocketAddr, tls: bool) -> MockAs {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (acceptor, ca_pem) = if tls {
            let (a, pem) = tls_acceptor();
            (Some(a), Some(pem))
        } else {
            (None, None)
        };
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acc) => {
                            if let Ok(tls) = acc.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        MockAs {
            addr,
            state,
            ca_pem,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        // HTTPS is verified against the certificate's name, so it is reached as localhost.
        let host = if self.ca_pem.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }

    pub fn add_token(&self, token: &str, claims: serde_json::Value) {
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.into(), claims);
    }

    pub fn revoke(&self, token: &str) {
        self.state.tokens.lock().unwrap().remove(token);
    }

    pub fn script(&self, s: Script) {
        *self.state.script.lock().unwrap() = s;
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Stops serving and frees the port.
    pub fn stop(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for MockAs {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let v = v.replace('+', " ");
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

async fn handle(
    st: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let script = st.script.lock().unwrap().clone();
    if !script.latency.is_zero() {
        tokio::time::sleep(script.latency).await;
    }
    if let Some(status) = script.status {
        return Ok(json(status, script.body.unwrap_or_else(|| "{}".into())));
    }
    if let Some(body) = script.body {
        return Ok(json(200, body));
    }
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let form = String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec())
        .unwrap_or_default();
    match path.as_str() {
        "/introspect" => {
            use base64::Engine as _;
            let expected = base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
            let (kind, ok) = match (&auth, form_value(&form, "client_id")) {
                (Some(a), _) if a.starts_with("Basic ") => ("basic", a[6..] == expected),
                (None, Some(id)) => (
                    "post",
                    id == CLIENT_ID
                        && form_value(&form, "client_secret").as_deref() == Some(CLIENT_SECRET),
                ),
                _ => ("none", false),
            };
            st.client_auth.lock().unwrap().push(kind);
            if !ok {
                return Ok(json(401, r#"{"error":"invalid_client"}"#.into()));
            }
            if form_value(&form, "token_type_hint").as_deref() != Some("access_token") {
                return Ok(json(400, r#"{"error":"invalid_request"}"#.into()));
            }
            let token = form_value(&form, "token").unwrap_or_default();
            let body = match st.tokens.lock().unwrap().get(&token) {
                Some(claims) => {
                    let mut c = claims.clone();
                    c["active"] = serde_json::Value::Bool(true);
                    c.to_string()
                }
                None => r#"{"active":false}"#.into(),
            };
            Ok(json(200, body))
        }
        "/userinfo" => {
            let token = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or_default();
            match st.tokens.lock().unwrap().get(token) {
                Some(claims) => Ok(json(200, claims.to_string())),
                None => Ok(json(401, r#"{"error":"invalid_token"}"#.into())),
            }
        }
        _ => Ok(json(404, "{}".into())),
    }
}

/// A CA, and a server certificate for localhost signed by it.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sipward test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let chain = vec![cert.der().clone()];
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca.pem())
}
