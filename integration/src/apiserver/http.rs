//! HTTP/1.1 serving: routing of the REST paths, list and watch, the admin endpoints and the
//! fault switches. One tokio task per connection, one per watch stream.

use super::discovery;
use super::selector::{FieldQuery, LabelQuery};
use super::store::{ApiError, Change, EventType, Kind, Store, WriteMode};
use super::table::{self, IncludeObject};
use super::ApiServerConfig;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type Body = BoxBody<Bytes, std::io::Error>;

/// Largest request body accepted (objects here are small; this bounds memory).
const MAX_BODY: usize = 8 << 20;

/// State shared by the accept loop, every connection and the [`super::ApiServer`] handle.
pub(crate) struct Shared {
    pub store: Store,
    config: ApiServerConfig,
    addr: SocketAddr,
    /// Bumped to end every open watch abruptly.
    drop_watches: watch::Sender<u64>,
    /// Bumped to close every open connection.
    kill_connections: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    refuse_until: Mutex<Option<Instant>>,
    unavailable_until: Mutex<Option<Instant>>,
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|epoch| *epoch += 1);
}

fn window_open(window: &Mutex<Option<Instant>>) -> bool {
    let guard = window.lock().unwrap_or_else(|p| p.into_inner());
    guard.is_some_and(|until| Instant::now() < until)
}

fn set_window(window: &Mutex<Option<Instant>>, until: Option<Instant>) {
    *window.lock().unwrap_or_else(|p| p.into_inner()) = until;
}

impl Shared {
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn drop_watches(&self) {
        bump(&self.drop_watches);
    }

    pub fn refuse_connections(&self, duration: Duration) {
        set_window(&self.refuse_until, Some(Instant::now() + duration));
        bump(&self.drop_watches);
        bump(&self.kill_connections);
    }

    pub fn unavailable(&self, duration: Duration) {
        set_window(&self.unavailable_until, Some(Instant::now() + duration));
        bump(&self.drop_watches);
    }

    pub fn heal(&self) {
        set_window(&self.refuse_until, None);
        set_window(&self.unavailable_until, None);
    }
}

/// What [`serve`] started: the plain listener's address, the HTTPS listener's (when
/// configured), the shared state and the accept loops.
pub(crate) struct Serving {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Bind and spawn the accept loop (and the HTTPS one when `config.tls` asks for it).
pub(crate) async fn serve(addr: SocketAddr, config: ApiServerConfig) -> anyhow::Result<Serving> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the API stand-in to {addr}"))?;
    let local = listener
        .local_addr()
        .context("local address of the API stand-in")?;
    let tls = match &config.tls {
        Some(tls) => {
            let l = TcpListener::bind(tls.addr).await.with_context(|| {
                format!("bind the API stand-in's HTTPS listener to {}", tls.addr)
            })?;
            let tls_local = l
                .local_addr()
                .context("local address of the HTTPS listener")?;
            let auth = TlsAuth {
                acceptor: tls.acceptor()?,
                bearer_token: Arc::from(tls.bearer_token.as_str()),
            };
            Some((l, tls_local, auth))
        }
        None => None,
    };
    let store = Store::new(config.history_limit);
    for namespace in &config.builtin_namespaces {
        store
            .create(Kind::Namespace, json!({"metadata": {"name": namespace}}))
            .map_err(|err| anyhow::anyhow!("create namespace {namespace}: {err}"))?;
    }
    for (kind, object) in &config.initial_objects {
        match store.create(*kind, object.clone()) {
            // A builtin namespace is there already.
            Err(err) if err.code == 409 && *kind == Kind::Namespace => {}
            Err(err) => anyhow::bail!("restore {kind:?} {}: {err}", object["metadata"]["name"]),
            Ok(_) => {}
        }
    }
    let shared = Arc::new(Shared {
        store,
        config,
        addr: local,
        drop_watches: watch::channel(0).0,
        kill_connections: watch::channel(0).0,
        shutdown: watch::channel(false).0,
        refuse_until: Mutex::new(None),
        unavailable_until: Mutex::new(None),
    });
    let mut tasks = vec![tokio::spawn(accept_loop(listener, shared.clone(), None))];
    let mut tls_addr = None;
    if let Some((l, tls_local, auth)) = tls {
        tasks.push(tokio::spawn(accept_loop(l, shared.clone(), Some(auth))));
        tls_addr = Some(tls_local);
    }
    Ok(Serving {
        addr: local,
        tls_addr,
        shared,
        tasks,
    })
}

/// The HTTPS listener's handshake and the token its requests must carry.
#[derive(Clone)]
struct TlsAuth {
    acceptor: tokio_rustls::TlsAcceptor,
    bearer_token: Arc<str>,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAuth>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("API stand-in: accept: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if window_open(&shared.refuse_until) {
            // The fault: the client sees its connection closed before any response.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        match tls.clone() {
            None => {
                tokio::spawn(serve_connection(stream, shared, None));
            }
            Some(auth) => {
                tokio::spawn(async move {
                    match auth.acceptor.accept(stream).await {
                        Ok(stream) => {
                            serve_connection(stream, shared, Some(auth.bearer_token)).await
                        }
                        Err(err) => tracing::debug!("API stand-in: TLS handshake: {err}"),
                    }
                });
            }
        }
    }
}

/// Serve one connection. With `bearer_token`, a request without that token gets 401.
async fn serve_connection<S>(stream: S, shared: Arc<Shared>, bearer_token: Option<Arc<str>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut kill = shared.kill_connections.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow_and_update() {
        return;
    }
    kill.borrow_and_update();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        let authorized = bearer_token.as_deref().is_none_or(|token| {
            super::tls::bearer_matches(request.headers().get(hyper::header::AUTHORIZATION), token)
        });
        async move {
            if !authorized {
                return Ok::<_, Infallible>(error_response(&ApiError::new(
                    401,
                    "Unauthorized",
                    "Unauthorized",
                )));
            }
            Ok::<_, Infallible>(handle(shared, request).await)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(err) = result {
                tracing::debug!("API stand-in connection: {err}");
            }
        }
        _ = kill.changed() => {}
        _ = shutdown.changed() => {}
    }
}

// ---- responses ----

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(status: u16, value: &Value) -> Response<Body> {
    json_response_typed(status, value, "application/json")
}

fn json_response_typed(status: u16, value: &Value, content_type: &'static str) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

fn text_response(status: u16, text: String) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn not_found_path(path: &str) -> Response<Body> {
    error_response(&ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    ))
}

fn method_not_allowed(method: &Method) -> Response<Body> {
    error_response(&ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    ))
}

// ---- request parsing ----

/// `application/x-www-form-urlencoded` decoding (client-go encodes spaces as '+').
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        params
            .entry(url_decode(key))
            .or_insert_with(|| url_decode(value));
    }
    params
}

fn is_true(params: &HashMap<String, String>, key: &str) -> bool {
    matches!(
        params.get(key).map(String::as_str),
        Some("1" | "true" | "True")
    )
}

/// A REST path resolved to a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourcePath {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn resolve(group: &str, version: &str, rest: &[String]) -> Option<ResourcePath> {
    let path = |kind: Kind, namespace: Option<&String>, name: Option<&String>, status: bool| {
        Some(ResourcePath {
            kind,
            namespace: namespace.cloned(),
            name: name.cloned(),
            status,
        })
    };
    match rest {
        [plural] => path(
            Kind::from_plural(group, version, plural)?,
            None,
            None,
            false,
        ),
        [ns_word, namespace, plural, tail @ ..] if ns_word == "namespaces" => {
            if let Some(kind) = Kind::from_plural(group, version, plural).filter(|k| k.namespaced())
            {
                return match tail {
                    [] => path(kind, Some(namespace), None, false),
                    [name] => path(kind, Some(namespace), Some(name), false),
                    [name, sub] if sub == "status" && kind.has_status() => {
                        path(kind, Some(namespace), Some(name), true)
                    }
                    _ => None,
                };
            }
            // `/api/v1/namespaces/{name}/status`
            match (group, plural.as_str(), tail) {
                ("", "status", []) => path(Kind::Namespace, None, Some(namespace), true),
                _ => None,
            }
        }
        [plural, name] => {
            let kind = Kind::from_plural(group, version, plural).filter(|k| !k.namespaced())?;
            path(kind, None, Some(name), false)
        }
        [plural, name, sub] if sub == "status" => {
            let kind = Kind::from_plural(group, version, plural).filter(|k| !k.namespaced())?;
            path(kind, None, Some(name), true)
        }
        _ => None,
    }
}

// ---- the handler ----

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let params = parse_query(request.uri().query());
    if let Some(admin) = path.strip_prefix("/_standin/") {
        return handle_admin(&shared, request.method(), admin, &params);
    }
    if window_open(&shared.unavailable_until) {
        let mut response = error_response(&ApiError::new(
            503,
            "ServiceUnavailable",
            "the API stand-in is unavailable (fault injected)",
        ));
        response
            .headers_mut()
            .insert("Retry-After", HeaderValue::from_static("1"));
        return response;
    }
    let accept = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(url_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = request.method() == Method::GET;
    let aggregated = shared.config.aggregated_discovery && discovery::wants_aggregated(&accept);
    let served = shared.config.served_kinds();
    let served = served.as_slice();
    match segs.as_slice() {
        ["version"] if get => return json_response(200, &discovery::version()),
        ["api"] if get => {
            if aggregated {
                return json_response_typed(
                    200,
                    &discovery::aggregated(served, true),
                    discovery::AGGREGATED_CONTENT_TYPE,
                );
            }
            return json_response(200, &discovery::core_versions(&shared.addr.to_string()));
        }
        ["apis"] if get => {
            if aggregated {
                return json_response_typed(
                    200,
                    &discovery::aggregated(served, false),
                    discovery::AGGREGATED_CONTENT_TYPE,
                );
            }
            return json_response(200, &discovery::group_list(served));
        }
        ["api", "v1"] if get => {
            return discovery::resource_list(served, "", "v1")
                .map_or_else(|| not_found_path(&path), |v| json_response(200, &v));
        }
        ["apis", group] if get => {
            return discovery::group(served, group)
                .map_or_else(|| not_found_path(&path), |v| json_response(200, &v));
        }
        ["openapi", "v3"] if get => return json_response(200, &discovery::openapi_v3_root(served)),
        ["openapi", "v3", "api", "v1"] if get => {
            return discovery::openapi_v3_group(served, "", "v1")
                .map_or_else(|| not_found_path(&path), |v| json_response(200, &v));
        }
        ["openapi", "v3", "apis", group, version] if get => {
            return discovery::openapi_v3_group(served, group, version)
                .map_or_else(|| not_found_path(&path), |v| json_response(200, &v));
        }
        ["apis", group, version] if get => {
            return discovery::resource_list(served, group, version)
                .map_or_else(|| not_found_path(&path), |v| json_response(200, &v));
        }
        _ => {}
    }
    let resource = match segs.as_slice() {
        ["api", "v1", ..] => resolve("", "v1", &segments[2..]),
        ["apis", group, version, ..] => resolve(group, version, &segments[3..]),
        _ => None,
    };
    let Some(resource) = resource.filter(|r| served.contains(&r.kind)) else {
        return not_found_path(&path);
    };
    if params.contains_key("dryRun") {
        // Honest refusal rather than silently committing a dry run.
        return error_response(&ApiError::bad_request(
            "dryRun is not supported by the API stand-in",
        ));
    }
    let method = request.method().clone();
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let result = match (&method, resource.name.is_some()) {
        (&Method::GET, false) => {
            return list_or_watch(&shared, &resource, &params, &accept);
        }
        (&Method::GET, true) => get_object(&shared, &resource, &params, &accept),
        (&Method::POST, false) => match read_json(request).await {
            Ok(body) => create(&shared, &resource, body),
            Err(err) => Err(err),
        },
        (&Method::PUT, true) => match read_json(request).await {
            Ok(body) => update(&shared, &resource, body),
            Err(err) => Err(err),
        },
        (&Method::PATCH, true) => match read_body(request).await {
            Ok(body) => patch(&shared, &resource, &content_type, &body),
            Err(err) => Err(err),
        },
        (&Method::DELETE, true) => shared
            .store
            .delete(
                resource.kind,
                resource.namespace.as_deref(),
                resource.name.as_deref().unwrap_or(""),
            )
            .map(|object| (200, object)),
        _ => return method_not_allowed(&method),
    };
    match result {
        Ok((code, value)) => json_response(code, &value),
        Err(err) => error_response(&err),
    }
}

fn handle_admin(
    shared: &Shared,
    method: &Method,
    admin: &str,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let seconds = || {
        params
            .get("seconds")
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    };
    match (method, admin) {
        (&Method::GET, "rv") => {
            text_response(200, format!("{}\n", shared.store.resource_version()))
        }
        (&Method::POST, "drop-watches") => {
            shared.drop_watches();
            text_response(200, "watches dropped\n".into())
        }
        (&Method::POST, "expire") => {
            shared.store.expire_history();
            text_response(
                200,
                format!("history expired at {}\n", shared.store.resource_version()),
            )
        }
        (&Method::POST, "heal") => {
            shared.heal();
            text_response(200, "healed\n".into())
        }
        (&Method::POST, "unavailable") => match seconds() {
            Some(duration) => {
                shared.unavailable(duration);
                text_response(200, format!("unavailable for {duration:?}\n"))
            }
            None => text_response(400, "seconds=N required\n".into()),
        },
        (&Method::POST, "refuse") => match seconds() {
            Some(duration) => {
                // New connections are refused at once; the open ones (this one included)
                // are closed a moment later so that this answer still gets out.
                set_window(&shared.refuse_until, Some(Instant::now() + duration));
                shared.drop_watches();
                let kill = shared.kill_connections.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    bump(&kill);
                });
                text_response(200, format!("refusing connections for {duration:?}\n"))
            }
            None => text_response(400, "seconds=N required\n".into()),
        },
        _ => text_response(
            404,
            format!("unknown admin endpoint {method} /_standin/{admin}\n"),
        ),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
    limited
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|err| ApiError::bad_request(format!("read request body: {err}")))
}

async fn read_json(request: Request<Incoming>) -> Result<Value, ApiError> {
    let body = read_body(request).await?;
    serde_json::from_slice(&body)
        .map_err(|err| ApiError::bad_request(format!("the request body is not JSON: {err}")))
}

/// Put the URL's namespace and name into the body, refusing a body that names others.
fn bind_to_path(resource: &ResourcePath, body: &mut Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    let meta = &mut body["metadata"];
    if let Some(namespace) = &resource.namespace {
        match meta["namespace"].as_str() {
            None | Some("") => meta["namespace"] = json!(namespace),
            Some(given) if given != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on \
                     the request",
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(name) = &resource.name {
        match meta["name"].as_str() {
            None | Some("") => meta["name"] = json!(name),
            Some(given) if given != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn create(
    shared: &Shared,
    resource: &ResourcePath,
    mut body: Value,
) -> Result<(u16, Value), ApiError> {
    if resource.kind.namespaced() && resource.namespace.is_none() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "create needs a namespaced collection path",
        ));
    }
    bind_to_path(resource, &mut body)?;
    shared.store.create(resource.kind, body).map(|v| (201, v))
}

fn mode(resource: &ResourcePath) -> WriteMode {
    if resource.status {
        WriteMode::Status
    } else {
        WriteMode::Main
    }
}

fn update(
    shared: &Shared,
    resource: &ResourcePath,
    mut body: Value,
) -> Result<(u16, Value), ApiError> {
    bind_to_path(resource, &mut body)?;
    shared
        .store
        .update(resource.kind, body, mode(resource))
        .map(|v| (200, v))
}

fn patch(
    shared: &Shared,
    resource: &ResourcePath,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let patch: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("the patch is not JSON: {err}")))?;
    let (namespace, name) = (
        resource.namespace.as_deref(),
        resource.name.as_deref().unwrap_or(""),
    );
    let result = match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => shared
            .store
            .merge_patch(resource.kind, namespace, name, &patch, mode(resource)),
        "application/json-patch+json" => {
            shared
                .store
                .json_patch(resource.kind, namespace, name, &patch, mode(resource))
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"),
            ))
        }
    };
    result.map(|v| (200, v))
}

fn get_object(
    shared: &Shared,
    resource: &ResourcePath,
    params: &HashMap<String, String>,
    accept: &str,
) -> Result<(u16, Value), ApiError> {
    let name = resource.name.as_deref().unwrap_or("");
    let object = shared
        .store
        .get(resource.kind, resource.namespace.as_deref(), name)
        .ok_or_else(|| ApiError::not_found(resource.kind, name))?;
    if table::wants_table(accept) {
        let include = IncludeObject::parse(params.get("includeObject").map(String::as_str));
        let rv = object["metadata"]["resourceVersion"].clone();
        return Ok((
            200,
            table::table(
                resource.kind,
                &[object],
                json!({"resourceVersion": rv}),
                include,
            ),
        ));
    }
    Ok((200, object))
}

/// The selection a list or watch asks for.
struct Selection {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelQuery,
    fields: FieldQuery,
}

impl Selection {
    fn parse(
        resource: &ResourcePath,
        params: &HashMap<String, String>,
    ) -> Result<Selection, ApiError> {
        Ok(Selection {
            kind: resource.kind,
            namespace: resource.namespace.clone(),
            labels: LabelQuery::parse(params.get("labelSelector").map_or("", String::as_str))?,
            fields: FieldQuery::parse(
                resource.kind,
                params.get("fieldSelector").map_or("", String::as_str),
            )?,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let in_namespace = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        in_namespace && self.labels.matches(object) && self.fields.matches(object)
    }

    /// The event a change is for this watch: selector-filtered watches see an object that
    /// starts matching as ADDED and one that stops matching as DELETED (the watch cache's
    /// behaviour).
    fn event<'a>(&self, change: &'a Change) -> Option<(EventType, &'a Value)> {
        let now = self.matches(&change.object);
        match change.event {
            EventType::Added | EventType::Deleted => now.then_some((change.event, &change.object)),
            EventType::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some((EventType::Modified, &change.object)),
                    (false, true) => Some((EventType::Added, &change.object)),
                    (true, false) => Some((EventType::Deleted, &change.object)),
                    (false, false) => None,
                }
            }
        }
    }
}

fn list_kind_name(kind: Kind) -> String {
    format!("{}List", kind.name())
}

fn list_or_watch(
    shared: &Arc<Shared>,
    resource: &ResourcePath,
    params: &HashMap<String, String>,
    accept: &str,
) -> Response<Body> {
    let selection = match Selection::parse(resource, params) {
        Ok(selection) => selection,
        Err(err) => return error_response(&err),
    };
    let table_include = table::wants_table(accept)
        .then(|| IncludeObject::parse(params.get("includeObject").map(String::as_str)));
    if is_true(params, "watch") {
        return watch_response(shared.clone(), selection, params, table_include);
    }
    let (items, rv) = shared
        .store
        .snapshot(selection.kind, selection.namespace.as_deref());
    let mut items: Vec<Value> = items.into_iter().filter(|o| selection.matches(o)).collect();
    // `continue` = the namespace/name of the last item sent (a snapshot is not kept: a page
    // reflects the state when it is served, which list clients tolerate).
    if let Some(token) = params.get("continue").filter(|t| !t.is_empty()) {
        items.retain(|o| object_position(o).as_str() > token.as_str());
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    if let Some(limit) = limit {
        if items.len() > limit {
            let remaining = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                metadata["continue"] = json!(object_position(last));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
    }
    if let Some(include) = table_include {
        return json_response(
            200,
            &table::table(selection.kind, &items, metadata, include),
        );
    }
    json_response(
        200,
        &json!({
            "kind": list_kind_name(selection.kind),
            "apiVersion": selection.kind.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// Sort position of an object in lists (the store's key order): `namespace/name`.
fn object_position(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("")
    )
}

// ---- watch ----

struct WatchParams {
    /// `None`: start with the current state as ADDED events ("" or "0").
    from: Option<u64>,
    send_initial_events: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
    table: Option<IncludeObject>,
}

fn watch_response(
    shared: Arc<Shared>,
    selection: Selection,
    params: &HashMap<String, String>,
    table: Option<IncludeObject>,
) -> Response<Body> {
    let from = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resource version {rv:?}"
                )))
            }
        },
    };
    let watch_params = WatchParams {
        from,
        send_initial_events: is_true(params, "sendInitialEvents"),
        bookmarks: is_true(params, "allowWatchBookmarks"),
        timeout: params
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .map(Duration::from_secs),
        table,
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    tokio::spawn(run_watch(shared, selection, watch_params, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn event_line(kind_type: &str, object: Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": kind_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, rv: u64, initial_events_end: bool) -> Value {
    let mut object = json!({
        "kind": kind.name(),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
    });
    if initial_events_end {
        object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    object
}

/// Why a watch stream stops.
enum End {
    /// The client went away.
    Gone,
    /// Abort the stream mid-way (fault or shutdown): the client sees a broken response.
    Abort,
    /// Finish cleanly (timeout, or after an ERROR event).
    Finish,
}

async fn run_watch(
    shared: Arc<Shared>,
    selection: Selection,
    params: WatchParams,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) {
    let mut drop_rx = shared.drop_watches.subscribe();
    drop_rx.borrow_and_update();
    let mut shutdown = shared.shutdown.subscribe();
    let mut latest = shared.store.subscribe();
    latest.borrow_and_update();
    let end = watch_loop(
        &shared,
        &selection,
        &params,
        &tx,
        &mut drop_rx,
        &mut shutdown,
        &mut latest,
    )
    .await;
    if let End::Abort = end {
        let _ = tx
            .send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "watch dropped by the API stand-in",
            )))
            .await;
    }
}

async fn send(
    tx: &mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    line: Bytes,
) -> Result<(), End> {
    tx.send(Ok(Frame::data(line))).await.map_err(|_| End::Gone)
}

#[allow(clippy::too_many_arguments)]
async fn watch_loop(
    shared: &Shared,
    selection: &Selection,
    params: &WatchParams,
    tx: &mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    drop_rx: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
    latest: &mut watch::Receiver<u64>,
) -> End {
    let kind = selection.kind;
    let render = |object: &Value| -> Value {
        match params.table {
            Some(include) => {
                let rv = object["metadata"]["resourceVersion"].clone();
                table::table(
                    kind,
                    std::slice::from_ref(object),
                    json!({"resourceVersion": rv}),
                    include,
                )
            }
            None => object.clone(),
        }
    };
    let mut cursor = match params.from {
        Some(rv) => rv,
        None => {
            let (items, rv) = shared.store.snapshot(kind, selection.namespace.as_deref());
            for object in items.iter().filter(|o| selection.matches(o)) {
                if let Err(end) = send(tx, event_line("ADDED", render(object))).await {
                    return end;
                }
            }
            rv
        }
    };
    if params.send_initial_events {
        if params.from.is_some() {
            // sendInitialEvents with a version means: the state at that version first. The
            // stand-in has no old states; send the current one (ADDED) and continue.
            let (items, rv) = shared.store.snapshot(kind, selection.namespace.as_deref());
            for object in items.iter().filter(|o| selection.matches(o)) {
                if let Err(end) = send(tx, event_line("ADDED", render(object))).await {
                    return end;
                }
            }
            cursor = rv;
        }
        if let Err(end) = send(tx, event_line("BOOKMARK", bookmark(kind, cursor, true))).await {
            return end;
        }
    }
    let deadline = params.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut bookmark_tick = tokio::time::interval(shared.config.bookmark_interval);
    bookmark_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    bookmark_tick.tick().await; // the first tick is immediate
    loop {
        match shared.store.changes_since(kind, cursor) {
            Ok((changes, now)) => {
                for change in changes {
                    if let Some((event, object)) = selection.event(&change) {
                        if let Err(end) = send(tx, event_line(event.as_str(), render(object))).await
                        {
                            return end;
                        }
                    }
                }
                cursor = now;
            }
            Err(expired) => {
                let _ = send(tx, event_line("ERROR", expired.to_status())).await;
                return End::Finish;
            }
        }
        tokio::select! {
            changed = latest.changed() => {
                if changed.is_err() {
                    return End::Abort;
                }
            }
            _ = bookmark_tick.tick(), if params.bookmarks => {
                if let Err(end) = send(tx, event_line("BOOKMARK", bookmark(kind, cursor, false))).await {
                    return end;
                }
            }
            _ = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => return End::Finish,
            _ = drop_rx.changed() => return End::Abort,
            _ = shutdown.changed() => return End::Abort,
            _ = tx.closed() => return End::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn paths_resolve_to_resources() {
        let core = |p: &str| resolve("", "v1", &segs(p));
        let net = |p: &str| resolve("networking.k8s.io", "v1", &segs(p));
        assert_eq!(core("pods").unwrap().kind, Kind::Pod);
        let pod = core("namespaces/x/pods/a/status").unwrap();
        assert_eq!(
            (
                pod.kind,
                pod.namespace.as_deref(),
                pod.name.as_deref(),
                pod.status
            ),
            (Kind::Pod, Some("x"), Some("a"), true)
        );
        let ns = core("namespaces/x").unwrap();
        assert_eq!((ns.kind, ns.name.as_deref()), (Kind::Namespace, Some("x")));
        let ns_status = core("namespaces/x/status").unwrap();
        assert_eq!((ns_status.kind, ns_status.status), (Kind::Namespace, true));
        assert_eq!(core("nodes/n1/status").unwrap().kind, Kind::Node);
        assert!(core("pods/a").is_none());
        assert!(core("networkpolicies").is_none());
        let np = net("namespaces/x/networkpolicies/p").unwrap();
        assert_eq!(
            (np.kind, np.name.as_deref()),
            (Kind::NetworkPolicy, Some("p"))
        );
        assert!(net("namespaces/x/networkpolicies/p/status").is_none());
        assert!(net("namespaces/x/pods").is_none());
        let cnp = |p: &str| resolve("policy.networking.k8s.io", "v1alpha2", &segs(p));
        let one = cnp("clusternetworkpolicies/deny").unwrap();
        assert_eq!(
            (one.kind, one.namespace, one.name.as_deref(), one.status),
            (Kind::ClusterNetworkPolicy, None, Some("deny"), false)
        );
        assert!(cnp("clusternetworkpolicies/deny/status").unwrap().status);
        assert!(cnp("namespaces/x/clusternetworkpolicies").is_none());
        assert!(resolve(
            "policy.networking.k8s.io",
            "v1",
            &segs("clusternetworkpolicies")
        )
        .is_none());
    }

    #[test]
    fn query_decoding() {
        let q = parse_query(Some("labelSelector=app+in+%28a%2Cb%29&watch=1&x"));
        assert_eq!(q["labelSelector"], "app in (a,b)");
        assert!(is_true(&q, "watch"));
        assert_eq!(q["x"], "");
        assert_eq!(url_decode("100%"), "100%");
    }
}
