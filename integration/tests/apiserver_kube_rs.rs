//! kube-rs (what palisade-agent uses) against the API stand-in: a client built from the
//! generated kubeconfig, `kube::runtime::watcher` on Pods and NetworkPolicies through the
//! initial list, an add, a modify, a delete, and a relist after 410 Expired.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use palisade_integration::apiserver::{ApiServer, Kind};
use serde_json::json;
use std::pin::Pin;
use std::time::Duration;

const STEP: Duration = Duration::from_secs(20);

async fn client_for(server: &ApiServer) -> (Client, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "palisade-apiserver-kube-rs-{}-{}.kubeconfig",
        std::process::id(),
        server.addr().port()
    ));
    server.write_kubeconfig(&path).expect("write kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("kube-rs reads the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube-rs accepts the kubeconfig");
    (Client::try_from(config).expect("client"), path)
}

type Events<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

/// The next watcher event, rendered as "Init", "InitApply(a)", "Apply(a)", ...; errors
/// (the 410 the watcher recovers from) are returned as "Error".
async fn next<K: kube::Resource + Clone>(events: &mut Events<K>) -> String {
    let item = tokio::time::timeout(STEP, events.next())
        .await
        .expect("watcher event in time")
        .expect("watcher stream continues");
    let rendered = match item {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(o)) => format!("InitApply({})", o.name_any()),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(o)) => format!("Apply({})", o.name_any()),
        Ok(Event::Delete(o)) => format!("Delete({})", o.name_any()),
        Err(err) => {
            eprintln!("watcher error: {err}");
            "Error".into()
        }
    };
    eprintln!("watcher event: {rendered}");
    rendered
}

async fn next_n<K: kube::Resource + Clone>(events: &mut Events<K>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next(events).await);
    }
    out
}

fn pod(name: &str) -> serde_json::Value {
    json!({"metadata": {"namespace": "x", "name": name, "labels": {"app": name}},
           "spec": {"nodeName": "node-1", "containers": [{"name": "main"}]},
           "status": {"phase": "Running", "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}]}})
}

#[tokio::test]
async fn pod_watcher_sees_list_add_modify_delete_and_relists_after_410() {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    server.create(Kind::Pod, pod("a")).unwrap();
    let (client, kubeconfig) = client_for(&server).await;

    // A plain list, typed.
    let pods: Api<Pod> = Api::all(client.clone());
    let listed = pods.list(&Default::default()).await.expect("list pods");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.1.2")
    );

    let mut events: Events<Pod> = watcher::watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    assert_eq!(
        next_n(&mut events, 3).await,
        ["Init", "InitApply(a)", "InitDone"]
    );

    server.create(Kind::Pod, pod("b")).unwrap();
    assert_eq!(next(&mut events).await, "Apply(b)");
    server
        .patch_labels(Kind::Pod, Some("x"), "b", &[("role", Some("db"))])
        .unwrap();
    assert_eq!(next(&mut events).await, "Apply(b)");
    server.delete(Kind::Pod, Some("x"), "b").unwrap();
    assert_eq!(next(&mut events).await, "Delete(b)");

    // Break the connections and keep the watcher out while a change happens and the history
    // is compacted: it then re-watches from a version that is gone, gets 410 Expired, and
    // lists again.
    server.create(Kind::Pod, pod("c")).unwrap();
    assert_eq!(next(&mut events).await, "Apply(c)");
    server.faults().refuse_connections(Duration::from_secs(60));
    server.create(Kind::Pod, pod("d")).unwrap(); // missed: nobody can watch now
    server.faults().expire_history();
    server.faults().heal();
    let mut seen = Vec::new();
    loop {
        let event = next(&mut events).await;
        let done = event == "InitDone";
        seen.push(event);
        if done {
            break;
        }
    }
    let init = seen.iter().position(|e| e == "Init").expect("relist");
    assert!(
        seen[..init].contains(&"Error".to_string()),
        "the 410 comes first: {seen:?}"
    );
    let relisted: Vec<&String> = seen
        .iter()
        .skip_while(|e| *e != "Init")
        .filter(|e| e.starts_with("InitApply"))
        .collect();
    assert_eq!(
        relisted,
        ["InitApply(a)", "InitApply(c)", "InitApply(d)"],
        "{seen:?}"
    );
    server.create(Kind::Pod, pod("e")).unwrap();
    assert_eq!(next(&mut events).await, "Apply(e)");
    let _ = std::fs::remove_file(kubeconfig);
}

#[tokio::test]
async fn policy_watcher_with_streaming_lists_and_selectors() {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "x"}}))
        .unwrap();
    let policy = |name: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": "x", "labels": {"owner": "t"}},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"ports": [{"port": 80, "endPort": 90}]}]}})
    };
    server.create(Kind::NetworkPolicy, policy("p1")).unwrap();
    let (client, kubeconfig) = client_for(&server).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client, "x");

    // StreamingList: sendInitialEvents + the initial-events-end bookmark.
    let config = watcher::Config::default()
        .labels("owner=t")
        .streaming_lists();
    let mut events: Events<NetworkPolicy> = watcher::watcher(policies.clone(), config).boxed();
    assert_eq!(
        next_n(&mut events, 3).await,
        ["Init", "InitApply(p1)", "InitDone"]
    );
    server.create(Kind::NetworkPolicy, policy("p2")).unwrap();
    assert_eq!(next(&mut events).await, "Apply(p2)");
    // Leaving the label selection is a deletion for this watch.
    server
        .patch_labels(Kind::NetworkPolicy, Some("x"), "p2", &[("owner", None)])
        .unwrap();
    assert_eq!(next(&mut events).await, "Delete(p2)");

    // Typed decoding of what the stand-in stored (endPort, defaults).
    let p1 = policies.get("p1").await.expect("get p1");
    let port = &p1.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(port.end_port, Some(90));
    assert_eq!(port.protocol.as_deref(), Some("TCP"));

    // A 422 reaches kube-rs as an API error with the Status' reason.
    let mut bad: NetworkPolicy = serde_json::from_value(policy("bad")).unwrap();
    bad.spec.as_mut().unwrap().ingress.as_mut().unwrap()[0]
        .ports
        .as_mut()
        .unwrap()[0]
        .end_port = Some(10);
    match policies.create(&Default::default(), &bad).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert_eq!(status.reason, "Invalid");
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    let _ = std::fs::remove_file(kubeconfig);
}

/// The HTTPS listener is what an in-cluster kube-rs client needs: it verifies the server by
/// IP against the run's CA and must send the service account token; without the token, or
/// with another, the stand-in answers 401.
#[tokio::test]
async fn in_cluster_client_over_https_with_a_bearer_token() {
    use palisade_integration::apiserver::tls::{ClusterCa, TlsListener};
    use palisade_integration::apiserver::ApiServerConfig;
    use std::sync::Arc;
    let ca = Arc::new(ClusterCa::generate(&["127.0.0.1".parse().unwrap()]).unwrap());
    let tls = TlsListener {
        addr: "127.0.0.1:0".parse().unwrap(),
        ca: ca.clone(),
        bearer_token: "the-token".into(),
    };
    let server = ApiServer::start_with(
        "127.0.0.1:0".parse().unwrap(),
        ApiServerConfig {
            tls: Some(tls),
            ..ApiServerConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.tls_addr().expect("HTTPS listener");
    let dir = std::env::temp_dir().join(format!("palisade-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let client = |token: &str| {
        let token_file = dir.join(format!("token-{token}"));
        std::fs::write(&token_file, token).unwrap();
        // What Config::incluster_env builds, with this listener's address.
        let mut config = kube::Config::new(format!("https://{addr}").parse().unwrap());
        config.root_cert = Some(vec![ca.ca_der.clone()]);
        config.auth_info.token_file = Some(token_file.display().to_string());
        Client::try_from(config).unwrap()
    };
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client("the-token"));
    let list = namespaces
        .list(&Default::default())
        .await
        .expect("list over HTTPS");
    assert!(list.items.iter().any(|n| n.name_any() == "default"));

    for token in ["another-token", ""] {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client(token));
        match namespaces.list(&Default::default()).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
            other => panic!("token {token:?}: expected 401, got {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    server.shutdown().await;
}
