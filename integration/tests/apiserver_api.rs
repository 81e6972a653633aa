//! The API stand-in over real HTTP: list/watch semantics (event order, resourceVersion
//! continuation, bookmarks, 410 after compaction, dropped watches), writes (generateName,
//! 409s, 422 causes, patches, namespace label) and the fault switches.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use palisade_integration::apiserver::{ApiServer, ApiServerConfig, Kind};
use serde_json::{json, Value};
use std::time::Duration;

const STEP: Duration = Duration::from_secs(10);

/// A tiny client for the stand-in's REST API.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    fn new(server: &ApiServer) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: server.url(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> hyper::Response<Incoming> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        tokio::time::timeout(STEP, self.client.request(request))
            .await
            .expect("response in time")
            .expect("HTTP request")
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_typed(method, path, "application/json", body)
            .await
    }

    async fn call_typed(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let response = self.send(method, path, content_type, body).await;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn watch(&self, path: &str) -> Watch {
        let response = self.send("GET", path, "application/json", None).await;
        assert_eq!(response.status(), 200, "watch {path}");
        Watch {
            body: response.into_body(),
            buffer: Vec::new(),
        }
    }
}

/// A watch response read event by event.
struct Watch {
    body: Incoming,
    buffer: Vec<u8>,
}

#[derive(Debug)]
enum Next {
    Event(Value),
    /// The stream ended cleanly.
    End,
    /// The stream broke (connection aborted mid-body).
    Broken,
}

impl Watch {
    async fn next(&mut self) -> Next {
        loop {
            if let Some(newline) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                return Next::Event(serde_json::from_slice(&line).expect("event is JSON"));
            }
            let frame = tokio::time::timeout(STEP, self.body.frame())
                .await
                .expect("watch event in time");
            match frame {
                None => return Next::End,
                Some(Err(_)) => return Next::Broken,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn event(&mut self) -> Value {
        match self.next().await {
            Next::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next event that is not a BOOKMARK.
    async fn change(&mut self) -> Value {
        loop {
            let event = self.event().await;
            if event["type"] != "BOOKMARK" {
                return event;
            }
        }
    }
}

fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .parse()
        .expect("numeric resourceVersion")
}

fn pod(namespace: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.244.0.9"},
    })
}

async fn start() -> (ApiServer, Http) {
    start_with(ApiServerConfig::default()).await
}

async fn start_with(config: ApiServerConfig) -> (ApiServer, Http) {
    let server = ApiServer::start_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("start the stand-in");
    let http = Http::new(&server);
    (server, http)
}

#[tokio::test]
async fn watch_from_list_version_sees_changes_in_order() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    server.create(Kind::Pod, pod("x", "a", "n1")).unwrap();

    let (status, list) = http.call("GET", "/api/v1/namespaces/x/pods", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let list_rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let mut watch = http
        .watch(&format!(
            "/api/v1/namespaces/x/pods?watch=1&resourceVersion={list_rv}"
        ))
        .await;
    let (status, _) = http
        .call(
            "POST",
            "/api/v1/namespaces/x/pods",
            Some(pod("x", "b", "n2")),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = http
        .call_typed(
            "PATCH",
            "/api/v1/namespaces/x/pods/b",
            "application/merge-patch+json",
            Some(json!({"metadata": {"labels": {"tier": "db"}}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, deleted) = http
        .call("DELETE", "/api/v1/namespaces/x/pods/b", None)
        .await;
    assert_eq!(status, 200);

    let added = watch.change().await;
    let modified = watch.change().await;
    let gone = watch.change().await;
    assert_eq!(
        [&added["type"], &modified["type"], &gone["type"]],
        ["ADDED", "MODIFIED", "DELETED"]
    );
    assert_eq!(modified["object"]["metadata"]["labels"]["tier"], "db");
    assert!(list_rv < rv_of(&added["object"]));
    assert!(rv_of(&added["object"]) < rv_of(&modified["object"]));
    assert!(rv_of(&modified["object"]) < rv_of(&gone["object"]));
    assert_eq!(gone["object"], deleted, "DELETED carries the final object");

    // Resuming from the MODIFIED version replays only what came after it.
    let mut resumed = http
        .watch(&format!(
            "/api/v1/namespaces/x/pods?watch=true&resourceVersion={}",
            rv_of(&modified["object"])
        ))
        .await;
    let replay = resumed.change().await;
    assert_eq!(replay["type"], "DELETED");
    assert_eq!(replay["object"]["metadata"]["name"], "b");
}

#[tokio::test]
async fn watch_without_version_starts_with_current_state() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    server.create(Kind::Pod, pod("x", "a", "n1")).unwrap();
    server.create(Kind::Pod, pod("x", "b", "n1")).unwrap();
    let mut watch = http.watch("/api/v1/pods?watch=1").await;
    let first = watch.change().await;
    let second = watch.change().await;
    assert_eq!(
        (&first["type"], &second["type"]),
        (&json!("ADDED"), &json!("ADDED"))
    );
    assert_eq!(first["object"]["metadata"]["name"], "a");
    assert_eq!(second["object"]["metadata"]["name"], "b");
    server.delete(Kind::Pod, Some("x"), "a").unwrap();
    assert_eq!(watch.change().await["type"], "DELETED");
}

#[tokio::test]
async fn bookmarks_carry_the_current_version() {
    let (server, http) = start_with(ApiServerConfig {
        bookmark_interval: Duration::from_millis(100),
        ..ApiServerConfig::default()
    })
    .await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let rv = server.resource_version();
    let mut watch = http
        .watch(&format!(
            "/apis/networking.k8s.io/v1/networkpolicies?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
        ))
        .await;
    // A change of another kind moves the global version; the bookmark reports it.
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "y"}}))
        .unwrap();
    let latest = server.resource_version();
    loop {
        let event = watch.event().await;
        assert_eq!(event["type"], "BOOKMARK", "no policy changed: {event}");
        assert_eq!(event["object"]["kind"], "NetworkPolicy");
        if rv_of(&event["object"]) == latest {
            break;
        }
        assert!(rv_of(&event["object"]) < latest);
    }
}

#[tokio::test]
async fn send_initial_events_ends_with_a_marked_bookmark() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let mut watch = http
        .watch("/api/v1/namespaces?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
        .await;
    let mut names = Vec::new();
    loop {
        let event = watch.event().await;
        if event["type"] == "BOOKMARK" {
            assert_eq!(
                event["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
                "true"
            );
            break;
        }
        assert_eq!(event["type"], "ADDED");
        names.push(
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(names, ["default", "x"]);
}

#[tokio::test]
async fn watch_from_an_expired_version_gets_410() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let old = server.resource_version();
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "y"}}))
        .unwrap();
    server.faults().expire_history();
    let mut watch = http
        .watch(&format!("/api/v1/namespaces?watch=1&resourceVersion={old}"))
        .await;
    let error = watch.event().await;
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(matches!(watch.next().await, Next::End));
    // The current version is still fine.
    let now = server.resource_version();
    let mut current = http
        .watch(&format!("/api/v1/namespaces?watch=1&resourceVersion={now}"))
        .await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "z"}}))
        .unwrap();
    assert_eq!(current.change().await["object"]["metadata"]["name"], "z");
}

#[tokio::test]
async fn bounded_history_expires_old_versions() {
    let (server, http) = start_with(ApiServerConfig {
        history_limit: 3,
        ..ApiServerConfig::default()
    })
    .await;
    let start = server.resource_version();
    for name in ["a", "b", "c", "d"] {
        server
            .create(Kind::Namespace, json!({"metadata": {"name": name}}))
            .unwrap();
    }
    let mut watch = http
        .watch(&format!(
            "/api/v1/namespaces?watch=1&resourceVersion={start}"
        ))
        .await;
    assert_eq!(watch.event().await["object"]["code"], 410);
    // One change later than the oldest kept one still resumes.
    let mut watch = http
        .watch(&format!(
            "/api/v1/namespaces?watch=1&resourceVersion={}",
            start + 1
        ))
        .await;
    for name in ["b", "c", "d"] {
        assert_eq!(watch.change().await["object"]["metadata"]["name"], name);
    }
}

#[tokio::test]
async fn dropped_watches_break_mid_stream() {
    let (server, http) = start().await;
    let mut watch = http.watch("/api/v1/namespaces?watch=1").await;
    assert_eq!(
        watch.change().await["object"]["metadata"]["name"],
        "default"
    );
    server.faults().drop_watches();
    assert!(matches!(watch.next().await, Next::Broken));
    // The server itself keeps serving.
    let (status, _) = http.call("GET", "/api/v1/namespaces", None).await;
    assert_eq!(status, 200);
    // Over HTTP too.
    let mut watch = http.watch("/api/v1/namespaces?watch=1").await;
    watch.change().await;
    let (status, _) = http.call("POST", "/_standin/drop-watches", None).await;
    assert_eq!(status, 200);
    assert!(matches!(watch.next().await, Next::Broken));
}

#[tokio::test]
async fn watch_timeout_ends_cleanly() {
    let (_server, http) = start().await;
    let mut watch = http.watch("/api/v1/nodes?watch=1&timeoutSeconds=1").await;
    assert!(matches!(watch.next().await, Next::End));
}

#[tokio::test]
async fn invalid_policy_is_refused_with_422_and_causes() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
    });
    let (status, body) = http
        .call(
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies",
            Some(policy),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(body["code"], 422);
    assert_eq!(body["details"]["kind"], "NetworkPolicy");
    assert_eq!(body["details"]["group"], "networking.k8s.io");
    assert_eq!(
        body["details"]["causes"],
        json!([{
            "reason": "FieldValueInvalid",
            "field": "spec.ingress[0].ports[0].endPort",
            "message": "Invalid value: 90: must be greater than or equal to `port`",
        }])
    );
    assert_eq!(
        body["message"],
        "NetworkPolicy.networking.k8s.io \"bad\" is invalid: spec.ingress[0].ports[0].endPort: \
         Invalid value: 90: must be greater than or equal to `port`"
    );
    assert!(server.get(Kind::NetworkPolicy, Some("x"), "bad").is_none());
    // The same through the Rust API.
    let err = server
        .create(
            Kind::NetworkPolicy,
            json!({"metadata": {"name": "bad", "namespace": "x"},
                   "spec": {"podSelector": {}, "egress": [{"to": [{}]}]}}),
        )
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(err.details.causes[0].field, "spec.egress[0].to[0]");
}

#[tokio::test]
async fn policies_get_defaults_and_generation() {
    let (server, _http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let created = server
        .create(
            Kind::NetworkPolicy,
            json!({"metadata": {"name": "p", "namespace": "x"},
                   "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}}),
        )
        .unwrap();
    assert_eq!(created["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(created["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
    // `len(spec.Egress) != 0` upstream: an empty egress list does not add Egress.
    let empty = server
        .create(
            Kind::NetworkPolicy,
            json!({"metadata": {"name": "q", "namespace": "x"},
                   "spec": {"podSelector": {}, "egress": []}}),
        )
        .unwrap();
    assert_eq!(empty["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(created["metadata"]["generation"], 1);
    // Nothing the client did not send appears as null.
    assert!(created["spec"].get("ingress").is_none(), "{created}");
    assert!(
        created["spec"]["egress"][0].get("to").is_none(),
        "{created}"
    );
    let mut changed = created.clone();
    changed["spec"]["egress"][0]["ports"][0]["port"] = json!(54);
    let updated = server.update(Kind::NetworkPolicy, changed).unwrap();
    assert_eq!(updated["metadata"]["generation"], 2);
}

#[tokio::test]
async fn generate_name_creates_unique_names() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"generateName": "deny-", "namespace": "x"},
        "spec": {"podSelector": {}},
    });
    let mut names = Vec::new();
    for _ in 0..3 {
        let (status, body) = http
            .call(
                "POST",
                "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies",
                Some(policy.clone()),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("deny-") && name.len() == 10, "{name}");
        assert_eq!(body["metadata"]["generateName"], "deny-");
        names.push(name);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3);
}

#[tokio::test]
async fn conflicts_and_missing_objects() {
    let (server, http) = start().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
    assert_eq!(
        http.call("POST", "/api/v1/namespaces", Some(ns.clone()))
            .await
            .0,
        201
    );
    let (status, body) = http.call("POST", "/api/v1/namespaces", Some(ns)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    assert_eq!(body["message"], "namespaces \"x\" already exists");

    // PUT with a stale resourceVersion: 409 Conflict; with the current one: accepted.
    let current = server.get(Kind::Namespace, None, "x").unwrap();
    let mut stale = current.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["metadata"]["labels"]["team"] = json!("a");
    let (status, body) = http.call("PUT", "/api/v1/namespaces/x", Some(stale)).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("Conflict")));
    let mut fresh = current.clone();
    fresh["metadata"]["labels"]["team"] = json!("a");
    let (status, body) = http.call("PUT", "/api/v1/namespaces/x", Some(fresh)).await;
    assert_eq!(status, 200, "{body}");
    assert!(rv_of(&body) > rv_of(&current));

    // A no-op PUT does not move the version.
    let (status, again) = http
        .call("PUT", "/api/v1/namespaces/x", Some(body.clone()))
        .await;
    assert_eq!((status, rv_of(&again)), (200, rv_of(&body)));

    // Namespaced writes into a namespace that does not exist: 404 for the namespace.
    let (status, body) = http
        .call(
            "POST",
            "/api/v1/namespaces/nope/pods",
            Some(pod("nope", "a", "n1")),
        )
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("namespaces \"nope\" not found"))
    );
    let (status, body) = http
        .call("GET", "/api/v1/namespaces/x/pods/missing", None)
        .await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("NotFound")));
    let (status, _) = http
        .call("DELETE", "/api/v1/namespaces/x/pods/missing", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = http.call("GET", "/api/v1/services", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn namespace_name_label_is_always_there() {
    let (server, http) = start().await;
    let created = server
        .create(
            Kind::Namespace,
            json!({"metadata": {"name": "x", "labels": {"team": "a"}}}),
        )
        .unwrap();
    assert_eq!(
        created["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "x", "team": "a"})
    );
    let (status, patched) = http
        .call_typed(
            "PATCH",
            "/api/v1/namespaces/x",
            "application/strategic-merge-patch+json",
            Some(json!({"metadata": {"labels": {"kubernetes.io/metadata.name": null, "team": null}}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        patched["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "x"})
    );
    server
        .patch_labels(
            Kind::Namespace,
            None,
            "x",
            &[("kubernetes.io/metadata.name", Some("other"))],
        )
        .unwrap();
    assert_eq!(
        server.get(Kind::Namespace, None, "x").unwrap()["metadata"]["labels"]
            ["kubernetes.io/metadata.name"],
        "x"
    );
}

#[tokio::test]
async fn label_selector_watch_sees_objects_enter_and_leave() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    server.create(Kind::Pod, pod("x", "a", "n1")).unwrap();
    let rv = server.resource_version();
    let mut watch = http
        .watch(&format!(
            "/api/v1/pods?watch=1&resourceVersion={rv}&labelSelector=role%3Dweb"
        ))
        .await;
    server
        .patch_labels(Kind::Pod, Some("x"), "a", &[("role", Some("web"))])
        .unwrap();
    server
        .patch_labels(Kind::Pod, Some("x"), "a", &[("other", Some("1"))])
        .unwrap();
    server
        .patch_labels(Kind::Pod, Some("x"), "a", &[("role", None)])
        .unwrap();
    let types: Vec<Value> = [
        watch.change().await,
        watch.change().await,
        watch.change().await,
    ]
    .iter()
    .map(|e| e["type"].clone())
    .collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn list_selectors_and_pages() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    for (name, node) in [("a", "n1"), ("b", "n2"), ("c", "n1"), ("d", "n1")] {
        server.create(Kind::Pod, pod("x", name, node)).unwrap();
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, on_n1) = http
        .call("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", None)
        .await;
    assert_eq!(names(&on_n1), ["a", "c", "d"]);
    let (_, by_label) = http
        .call(
            "GET",
            "/api/v1/namespaces/x/pods?labelSelector=app+in+%28b%2Cc%29",
            None,
        )
        .await;
    assert_eq!(names(&by_label), ["b", "c"]);
    let (status, body) = http
        .call("GET", "/api/v1/pods?fieldSelector=spec.bogus%3D1", None)
        .await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("BadRequest")));

    let (_, page1) = http.call("GET", "/api/v1/pods?limit=3", None).await;
    assert_eq!(names(&page1), ["a", "b", "c"]);
    assert_eq!(page1["metadata"]["remainingItemCount"], 1);
    let token = page1["metadata"]["continue"].as_str().unwrap();
    let (_, page2) = http
        .call(
            "GET",
            &format!(
                "/api/v1/pods?limit=3&continue={}",
                token.replace('/', "%2F")
            ),
            None,
        )
        .await;
    assert_eq!(names(&page2), ["d"]);
    assert!(page2["metadata"].get("continue").is_none());
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_resource() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let created = server.create(Kind::Pod, pod("x", "a", "n1")).unwrap();
    // A main-resource PUT cannot change status...
    let mut changed = created.clone();
    changed["status"]["podIP"] = json!("10.9.9.9");
    changed["metadata"]["labels"]["x"] = json!("y");
    let (status, body) = http
        .call("PUT", "/api/v1/namespaces/x/pods/a", Some(changed))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"]["podIP"], "10.244.0.9");
    assert_eq!(body["metadata"]["labels"]["x"], "y");
    // ...a /status patch changes only status.
    let (status, body) = http
        .call_typed(
            "PATCH",
            "/api/v1/namespaces/x/pods/a/status",
            "application/merge-patch+json",
            Some(json!({"status": {"podIP": "10.1.1.1"}, "metadata": {"labels": {"z": "1"}}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"]["podIP"], "10.1.1.1");
    assert!(body["metadata"]["labels"].get("z").is_none());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects() {
    let (server, http) = start().await;
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    server.create(Kind::Pod, pod("x", "a", "n1")).unwrap();
    let rv = server.resource_version();
    let mut watch = http
        .watch(&format!("/api/v1/pods?watch=1&resourceVersion={rv}"))
        .await;
    server.delete(Kind::Namespace, None, "x").unwrap();
    let event = watch.change().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("a"))
    );
    assert!(server.list(Kind::Pod, None).is_empty());
}

#[tokio::test]
async fn fault_switches_over_http() {
    let (server, http) = start().await;
    let (status, rv) = http.call("GET", "/_standin/rv", None).await;
    assert_eq!(status, 200);
    assert_eq!(rv, json!(server.resource_version()));

    let (status, _) = http
        .call("POST", "/_standin/unavailable?seconds=30", None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = http.call("GET", "/api/v1/namespaces", None).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    let (status, _) = http.call("POST", "/_standin/heal", None).await;
    assert_eq!(status, 200);
    assert_eq!(http.call("GET", "/api/v1/namespaces", None).await.0, 200);

    // Refused connections: a fresh client cannot get an answer until the window ends.
    server.faults().refuse_connections(Duration::from_secs(30));
    let fresh = Http::new(&server);
    let request = hyper::Request::builder()
        .uri(format!("{}/api/v1/namespaces", server.url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let refused = tokio::time::timeout(STEP, fresh.client.request(request))
        .await
        .expect("refusal is immediate");
    assert!(
        refused.is_err(),
        "a request got through during the refuse window"
    );
    server.faults().heal();
    let fresh = Http::new(&server);
    assert_eq!(fresh.call("GET", "/api/v1/namespaces", None).await.0, 200);
}

#[tokio::test]
async fn discovery_and_version() {
    let (_server, http) = start().await;
    let (status, version) = http.call("GET", "/version", None).await;
    assert_eq!((status, version["major"].as_str()), (200, Some("1")));
    let (_, core) = http.call("GET", "/api/v1", None).await;
    assert_eq!(core["kind"], "APIResourceList");
    let (_, groups) = http.call("GET", "/apis", None).await;
    assert_eq!(groups["groups"][0]["name"], "networking.k8s.io");
    assert_eq!(groups["groups"][1]["name"], "policy.networking.k8s.io");
    let (_, net) = http.call("GET", "/apis/networking.k8s.io/v1", None).await;
    assert_eq!(net["resources"][0]["name"], "networkpolicies");
}

#[test]
fn runs_on_its_own_thread_for_blocking_callers() {
    let server =
        ApiServer::start_in_thread("127.0.0.1:0".parse().unwrap(), ApiServerConfig::default())
            .expect("start in thread");
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /api/v1/namespaces/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"kubernetes.io/metadata.name\":\"x\""));
}

const CNP_PATH: &str = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";

fn cluster_policy(name: &str, priority: i64) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": "Admin", "priority": priority,
                 "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
                 "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]},
    })
}

/// The cluster-scoped custom resource: discovery, create, list, watch, replace, delete.
#[tokio::test]
async fn cluster_network_policies_are_served_like_a_crd() {
    let (server, http) = start().await;
    let (_, groups) = http.call("GET", "/apis", None).await;
    assert_eq!(groups["groups"][1]["name"], "policy.networking.k8s.io");
    assert_eq!(
        groups["groups"][1]["preferredVersion"]["groupVersion"],
        "policy.networking.k8s.io/v1alpha2"
    );
    let (status, list) = http
        .call("GET", "/apis/policy.networking.k8s.io/v1alpha2", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["resources"][0]["name"], "clusternetworkpolicies");
    assert_eq!(list["resources"][0]["namespaced"], false);

    let (status, listed) = http.call("GET", CNP_PATH, None).await;
    assert_eq!(
        (status, listed["kind"].as_str()),
        (200, Some("ClusterNetworkPolicyList"))
    );
    let mut watch = http
        .watch(&format!(
            "{CNP_PATH}?watch=1&resourceVersion={}",
            listed["metadata"]["resourceVersion"].as_str().unwrap()
        ))
        .await;
    let (status, created) = http
        .call("POST", CNP_PATH, Some(cluster_policy("deny", 10)))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(created["metadata"].get("namespace").is_none());
    let event = watch.change().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("deny"))
    );

    let mut replaced = created.clone();
    replaced["spec"]["priority"] = json!(20);
    let (status, stored) = http
        .call("PUT", &format!("{CNP_PATH}/deny"), Some(replaced))
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["metadata"]["generation"], 2);
    let event = watch.change().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["spec"]["priority"].as_i64()
        ),
        (Some("MODIFIED"), Some(20))
    );

    let (status, one) = http.call("GET", &format!("{CNP_PATH}/deny"), None).await;
    assert_eq!((status, one["spec"]["tier"].as_str()), (200, Some("Admin")));
    // Not namespaced: there is no namespaced path.
    let (status, _) = http
        .call(
            "GET",
            "/apis/policy.networking.k8s.io/v1alpha2/namespaces/x/clusternetworkpolicies",
            None,
        )
        .await;
    assert_eq!(status, 404);

    let (status, _) = http.call("DELETE", &format!("{CNP_PATH}/deny"), None).await;
    assert_eq!(status, 200);
    let event = watch.change().await;
    assert_eq!(event["type"], "DELETED");
    assert!(server
        .get(Kind::ClusterNetworkPolicy, None, "deny")
        .is_none());
}

/// As the API server with the CRD's structural schema and CEL rules: unknown fields pruned,
/// schema violations and wrong types refused with 422 and their causes.
#[tokio::test]
async fn invalid_cluster_network_policies_get_422() {
    let (server, http) = start().await;
    let mut bad = cluster_policy("bad", 1001);
    bad["spec"]["egress"] = json!([{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
                                    "protocols": [{"udp": {"destinationPort": {"range": {"start": 60, "end": 53}}}}]}]);
    let (status, body) = http.call("POST", CNP_PATH, Some(bad)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["details"]["kind"], "ClusterNetworkPolicy");
    assert_eq!(body["details"]["group"], "policy.networking.k8s.io");
    assert_eq!(
        body["details"]["causes"],
        json!([
            {"reason": "FieldValueInvalid", "field": "spec.priority",
             "message": "Invalid value: 1001: spec.priority in body should be less than or equal to 1000"},
            {"reason": "FieldValueInvalid", "field": "spec.egress[0].protocols[0].udp.destinationPort.range",
             "message": "Invalid value: \"object\": Start port must be less than End port"},
        ])
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("ClusterNetworkPolicy.policy.networking.k8s.io \"bad\" is invalid: ["));

    let mut wrong_type = cluster_policy("typed", 1);
    wrong_type["spec"]["priority"] = json!("high");
    let (status, body) = http.call("POST", CNP_PATH, Some(wrong_type)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "Invalid value: \"string\": spec.priority in body must be of type integer: \"string\""
    );

    // Pruning: an unknown field goes, and an ingress peer's `networks` (egress only) too,
    // which leaves that peer empty: refused.
    let mut unknown = cluster_policy("pruned", 3);
    unknown["spec"]["color"] = json!("blue");
    unknown["spec"]["ingress"][0]["from"][0]["namespaces"]["extra"] = json!(1);
    let stored = server.create(Kind::ClusterNetworkPolicy, unknown).unwrap();
    assert!(stored["spec"].get("color").is_none());
    assert_eq!(
        stored["spec"]["ingress"][0]["from"][0]["namespaces"],
        json!({})
    );
    let mut networks_in = cluster_policy("ingress-networks", 3);
    networks_in["spec"]["ingress"][0]["from"] = json!([{"networks": ["10.0.0.0/8"]}]);
    let err = server
        .create(Kind::ClusterNetworkPolicy, networks_in)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(
        err.details.causes[0].message,
        "Invalid value: 0: spec.ingress[0].from[0] in body should have at least 1 properties"
    );
    // The samples' `tcp: {}`: accepted (every TCP port).
    let mut any_tcp = cluster_policy("any-tcp", 4);
    any_tcp["spec"]["ingress"][0]["protocols"] = json!([{"tcp": {}}]);
    server.create(Kind::ClusterNetworkPolicy, any_tcp).unwrap();
}
