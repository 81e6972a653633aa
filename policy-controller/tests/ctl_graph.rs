//! `palisadectl reach -o dot|svg` on generated clusters: pods with the same reachability are
//! one box, arrows carry the ports, and Graphviz really draws it (the SVG's nodes and edges
//! are read back with an XML parser). Needs Graphviz' `dot` (tests/install-deps.sh installs
//! it); `PALISADE_GRAPH_OUT=DIR` keeps the pictures for a look.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;
use std::process::Command;

use palisade_testutil::TempDir;

fn ctl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .output()
        .expect("run palisadectl");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `palisadectl reach -f DIR ARGS...`
fn reach(dir: &TempDir, args: &[&str]) -> (i32, Vec<u8>, String) {
    let mut all = vec!["reach", "-f", dir.0.to_str().unwrap()];
    all.extend_from_slice(args);
    ctl(&all)
}

/// `n` pods of one role: namespace, name prefix, labels, the port they serve.
fn pods(out: &mut String, ns: &str, role: &str, n: usize, port: u16, first_ip: &mut u32) {
    for i in 0..n {
        let ip = *first_ip;
        *first_ip += 1;
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {role}-{i}, namespace: {ns}, labels: {{app: {role}, pod: {role}-{i}}}}}\n\
             spec:\n  nodeName: node-{node}\n  containers: [{{name: main, ports: [{{containerPort: {port}}}]}}]\n\
             status: {{podIPs: [{{ip: 10.244.{b}.{c}}}]}}\n",
            node = 1 + i % 3,
            b = ip / 250,
            c = 1 + ip % 250,
        );
    }
}

/// A shop: clients (shop) and a monitor (ops) reach the web servers on any port; only the web
/// servers reach the databases, on 5432; nothing isolates clients or the monitor.
fn shop(dir: &Path, clients: usize, webs: usize, dbs: usize) {
    let mut m = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ops}\n",
    );
    let mut ip = 0;
    pods(&mut m, "shop", "client", clients, 8080, &mut ip);
    pods(&mut m, "ops", "monitor", 1, 9090, &mut ip);
    pods(&mut m, "shop", "web", webs, 80, &mut ip);
    pods(&mut m, "shop", "db", dbs, 5432, &mut ip);
    m.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-clients-and-monitor, namespace: shop}\n\
         spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: client}}\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-web, namespace: shop}\n\
         spec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 5432}]\n",
    );
    std::fs::write(dir.join("shop.yaml"), m).unwrap();
}

/// `g3 [label="..."]` lines: id → label; `a -> b [...]` lines: (from, to) → label.
fn parse_dot(dot: &str) -> (BTreeMap<String, String>, BTreeMap<(String, String), String>) {
    let mut nodes = BTreeMap::new();
    let mut edges = BTreeMap::new();
    for line in dot.lines().map(str::trim) {
        let label = line
            .split_once("label=\"")
            .map(|(_, rest)| rest[..rest.find('"').unwrap()].replace("\\n", "\n"))
            .unwrap_or_default();
        if let Some((from, rest)) = line.split_once(" -> ") {
            let to = rest.split([' ', ';']).next().unwrap();
            edges.insert((from.to_string(), to.to_string()), label);
        } else if line.starts_with('g') && line.contains("[label=") {
            nodes.insert(line.split(' ').next().unwrap().to_string(), label);
        }
    }
    (nodes, edges)
}

/// The box whose label starts with `head`.
fn node_of<'a>(nodes: &'a BTreeMap<String, String>, head: &str) -> &'a str {
    let found: Vec<&String> = nodes
        .keys()
        .filter(|k| nodes[*k].starts_with(head))
        .collect();
    assert_eq!(found.len(), 1, "one box starting {head:?} in {nodes:#?}");
    found[0]
}

fn keep(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("PALISADE_GRAPH_OUT") {
        std::fs::write(Path::new(&dir).join(name), bytes).unwrap();
    }
}

#[test]
fn pods_with_the_same_reachability_are_one_box() {
    let d = TempDir::new("shop");
    shop(&d.0, 4, 3, 2);
    let (code, out, err) = reach(&d, &["--port", "80", "-o", "dot"]);
    assert_eq!(code, 0, "{err}");
    let dot = String::from_utf8(out).unwrap();
    keep("shop-80.dot", dot.as_bytes());
    let (nodes, edges) = parse_dot(&dot);
    // Clients and the monitor reach the same pods and are reached by the same on port 80:
    // one box across two namespaces. Web servers and databases each their own.
    assert_eq!(nodes.len(), 3, "{dot}");
    let open = node_of(&nodes, "ops, shop: 5 pods");
    let web = node_of(&nodes, "shop: 3 pods");
    let db = node_of(&nodes, "shop: 2 pods");
    assert!(
        nodes[web].contains("\napp=web\n"),
        "common labels: {}",
        nodes[web]
    );
    assert!(nodes[db].ends_with("db-0, db-1"), "{}", nodes[db]);
    assert!(
        nodes[open].contains("+1 more"),
        "four names shown: {}",
        nodes[open]
    );
    let want: BTreeSet<(String, String)> = [(open, web), (open, open), (web, open), (db, open)]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(
        edges.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "{dot}"
    );
}

#[test]
fn every_declared_port_labels_the_arrows_and_graphviz_draws_it() {
    let d = TempDir::new("svg");
    shop(&d.0, 4, 3, 2);
    let (code, out, err) = reach(&d, &["-o", "dot"]);
    assert_eq!(code, 0, "{err}");
    let dot = String::from_utf8(out).unwrap();
    keep("shop.dot", dot.as_bytes());
    let (nodes, edges) = parse_dot(&dot);
    let web = node_of(&nodes, "shop: 3 pods").to_string();
    let db = node_of(&nodes, "shop: 2 pods").to_string();
    // Web servers reach the databases on 5432 only (of 80, 5432, 8080, 9090).
    assert_eq!(edges[&(web.clone(), db.clone())], "5432/TCP", "{dot}");
    let open = node_of(&nodes, "ops, shop: 5 pods").to_string();
    assert_eq!(edges[&(open.clone(), web.clone())], "all ports", "{dot}");
    assert!(!edges.contains_key(&(db.clone(), web.clone())));

    let (code, svg, err) = reach(&d, &["-o", "svg"]);
    assert_eq!(code, 0, "{err}");
    keep("shop.svg", &svg);
    let text = String::from_utf8(svg).unwrap();
    // dot writes a DOCTYPE (the SVG 1.1 DTD): allowed, nothing is fetched.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, options).expect("dot's SVG is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let groups_of = |class: &str| -> BTreeSet<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("g") && n.attribute("class") == Some(class))
            .map(|g| {
                g.children()
                    .find(|c| c.has_tag_name("title"))
                    .and_then(|t| t.text())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(groups_of("node"), nodes.keys().cloned().collect(), "{text}");
    let svg_edges: BTreeSet<String> = groups_of("edge");
    let dot_edges: BTreeSet<String> = edges.keys().map(|(a, b)| format!("{a}->{b}")).collect();
    assert_eq!(svg_edges, dot_edges);
    // The labels are drawn: the boxes' first lines and the ports.
    let drawn: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    for want in ["shop: 3 pods", "shop: 2 pods", "5432/TCP", "app=web"] {
        assert!(drawn.contains(&want), "{want:?} not drawn: {drawn:?}");
    }
}

/// The point of the picture: 500 pods in a handful of roles are a handful of boxes.
#[test]
fn five_hundred_pods_are_a_readable_picture() {
    let d = TempDir::new("big");
    shop(&d.0, 300, 150, 49);
    let started = std::time::Instant::now();
    let (code, out, err) = reach(&d, &["--port", "80", "-o", "dot"]);
    eprintln!("reach -o dot over 500 pods: {:?}", started.elapsed());
    assert_eq!(code, 0, "{err}");
    let dot = String::from_utf8(out).unwrap();
    keep("shop-500.dot", dot.as_bytes());
    let (nodes, edges) = parse_dot(&dot);
    assert_eq!(nodes.len(), 3, "{dot}");
    assert_eq!(edges.len(), 4, "{dot}");
    assert!(
        nodes.values().any(|l| l.starts_with("ops, shop: 301 pods")),
        "{nodes:?}"
    );
}

#[test]
fn svg_without_graphviz_says_what_to_install() {
    let d = TempDir::new("nodot");
    shop(&d.0, 1, 1, 1);
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["reach", "-f", d.0.to_str().unwrap(), "-o", "svg"])
        .env("PATH", &d.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apt-get install graphviz") && err.contains("-o dot"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
