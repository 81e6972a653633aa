//! A DaemonSet's pod template turned into what kubelet would run on one node: the pod's
//! containers in order, each with its command and arguments (`$(VAR)` expanded), its
//! environment, its mounts, its security settings and its probes, plus the files and host
//! directories kubelet prepares first.
//!
//! Pure: no file is written and nothing runs here ([`super::podman`] does that), so every
//! corner is unit-tested. Every field of the DaemonSet is either honoured, or listed in
//! [`IGNORED`] with the reason it means nothing in the netns cluster, or an error that names
//! it (`spec.template.spec.containers[0].lifecycle: not supported by the netns cluster`): a
//! manifest change the runner cannot follow stops the run instead of being dropped.

use super::expand::expand;
use super::fields::{unsupported, Fields};
use super::security::{self, SecurityPlan};
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Fields that are read and ignored on purpose, with the reason. `[*]` stands for any index.
pub const IGNORED: &[(&str, &str)] = &[
    (
        "metadata.labels",
        "labels of the DaemonSet object: nothing selects it here",
    ),
    (
        "metadata.annotations",
        "nothing reads the DaemonSet's annotations here",
    ),
    (
        "spec.selector",
        "which pods the DaemonSet owns; the runner starts the one pod per node itself",
    ),
    (
        "spec.updateStrategy",
        "how a new revision replaces running pods; a netns cluster only ever runs one revision",
    ),
    (
        "spec.revisionHistoryLimit",
        "revisions are not kept: one revision per cluster",
    ),
    (
        "spec.minReadySeconds",
        "rollout pacing; the runner waits for readiness itself",
    ),
    (
        "spec.template.metadata.labels",
        "the agent pods are not published to the API stand-in (hostNetwork pods, which \
         NetworkPolicy does not select), so no selector sees their labels",
    ),
    (
        "spec.template.metadata.annotations",
        "nothing reads pod annotations here",
    ),
    (
        "spec.template.spec.priorityClassName",
        "scheduling and eviction priority: nothing competes for a netns node",
    ),
    (
        "spec.template.spec.tolerations",
        "netns nodes carry no taints, so the pod runs on every node as tolerations allow",
    ),
    (
        "spec.template.spec.dnsPolicy",
        "there is no cluster DNS here; like a hostNetwork pod the container resolves with the \
         machine's resolv.conf (podman copies it in)",
    ),
    (
        "spec.template.spec.initContainers[*].resources",
        "requests are for the scheduler and limits become cgroup limits; many nodes share one \
         machine here and nothing measures the agent against its limits",
    ),
    (
        "spec.template.spec.containers[*].resources",
        "requests are for the scheduler and limits become cgroup limits; many nodes share one \
         machine here and nothing measures the agent against its limits",
    ),
    (
        "spec.template.spec.initContainers[*].imagePullPolicy",
        "nothing is pulled: the image is loaded from the OCI layout before any pod starts",
    ),
    (
        "spec.template.spec.containers[*].imagePullPolicy",
        "nothing is pulled: the image is loaded from the OCI layout before any pod starts",
    ),
    (
        "spec.template.spec.initContainers[*].terminationMessagePath",
        "kubelet copies it into the pod status; the runner shows the container's log instead",
    ),
    (
        "spec.template.spec.containers[*].terminationMessagePath",
        "kubelet copies it into the pod status; the runner shows the container's log instead",
    ),
    (
        "spec.template.spec.initContainers[*].terminationMessagePolicy",
        "kubelet copies it into the pod status; the runner shows the container's log instead",
    ),
    (
        "spec.template.spec.containers[*].terminationMessagePolicy",
        "kubelet copies it into the pod status; the runner shows the container's log instead",
    ),
    (
        "spec.template.spec.containers[*].ports",
        "informational for a hostNetwork pod (the process binds the node's ports itself); \
         named ports are still resolved for probes",
    ),
];

/// Where kubelet puts a pod's service account files in every container.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The node the pod runs on, as kubelet knows it.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    /// The Node's InternalIPs, first one first (`status.hostIP`; also the pod IP of a
    /// hostNetwork pod).
    pub ips: Vec<IpAddr>,
    /// The node's file system root for hostPath volumes (`/opt/cni/bin` is
    /// `<host_root>/opt/cni/bin`).
    pub host_root: PathBuf,
    /// Kubelet's directory for this pod (configMap and service account files).
    pub pod_dir: PathBuf,
}

/// How a pod reaches the API server: what kubelet puts in every container's environment
/// (the `kubernetes` Service) and service account directory.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    pub host: IpAddr,
    pub port: u16,
    pub ca_pem: String,
    pub token: String,
}

/// One node's pod of the DaemonSet.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    /// The image every container names (the runner loads it from the OCI layout).
    pub image: String,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    /// Host paths to check or create before any container starts.
    pub host_paths: Vec<HostPathPlan>,
    /// Files kubelet writes for the pod (configMap volumes, service account).
    pub files: Vec<FilePlan>,
    pub termination_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub name: String,
    /// `command`: replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// `args`: replaces the image's cmd.
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<MountPlan>,
    pub security: SecurityPlan,
    pub readiness: Option<HttpProbe>,
    pub liveness: Option<HttpProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// A hostPath volume's directory or file on the node, and what kubelet checks or creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathPlan {
    /// The path as the manifest names it (`/opt/cni/bin`).
    pub path: String,
    /// Where that is for this node.
    pub source: PathBuf,
    pub kind: HostPathKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathKind {
    /// `type` unset or "": no check (the runtime fails if the path is missing).
    Unchecked,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    pub path: PathBuf,
    pub content: String,
    pub mode: u32,
}

/// An `httpGet` probe, as kubelet runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub host: IpAddr,
    pub port: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// Interpret `daemonset` (with the ConfigMaps it references from `configmaps`) for `node`.
pub fn plan_pod(
    daemonset: &Value,
    configmaps: &dyn Fn(&str, &str) -> Option<Value>,
    node: &NodeFacts,
    api: &ApiAccess,
) -> Result<PodPlan> {
    let mut ds = Fields::new(daemonset, "", "")?;
    match (ds.str("apiVersion")?, ds.str("kind")?) {
        (Some("apps/v1"), Some("DaemonSet")) => {}
        (v, k) => bail!("expected an apps/v1 DaemonSet, found {v:?} {k:?}"),
    }
    ds.get("status");
    let mut meta = ds.required_object("metadata")?;
    let ds_name = meta.required_str("name")?.to_string();
    let namespace = meta.str("namespace")?.unwrap_or("default").to_string();
    meta.finish()?;
    let mut spec = ds.required_object("spec")?;
    let mut template = spec.required_object("template")?;
    if let Some(tmeta) = template.object("metadata")? {
        tmeta.finish()?;
    }
    let mut pod = template.required_object("spec")?;

    let ctx = PodContext {
        namespace: namespace.clone(),
        name: format!("{ds_name}-{}", node.name),
        node,
        api,
        configmaps,
    };
    let plan = ctx.plan(&mut pod)?;
    pod.finish()?;
    template.finish()?;
    spec.finish()?;
    ds.finish()?;
    Ok(plan)
}

struct PodContext<'a> {
    namespace: String,
    name: String,
    node: &'a NodeFacts,
    api: &'a ApiAccess,
    configmaps: &'a dyn Fn(&str, &str) -> Option<Value>,
}

/// A pod volume, resolved.
enum Volume {
    HostPath(HostPathPlan),
    Files(PathBuf),
}

impl PodContext<'_> {
    fn host_ip(&self) -> Result<IpAddr> {
        self.node
            .ips
            .first()
            .copied()
            .ok_or_else(|| anyhow!("node {} has no InternalIP", self.node.name))
    }

    fn plan(&self, pod: &mut Fields) -> Result<PodPlan> {
        // The netns cluster wires pods with the plugin this pod installs; the pod itself can
        // only share its node's network namespace.
        if pod.bool("hostNetwork")? != Some(true) {
            bail!(
                "{}: only hostNetwork pods can run on the netns cluster's nodes",
                pod.at("hostNetwork")
            );
        }
        for key in ["hostPID", "hostIPC"] {
            if pod.bool(key)? == Some(true) {
                return Err(unsupported(&pod.at(key)));
            }
        }
        // A DaemonSet allows only Always. Containers are not restarted here: one that exits
        // makes the cluster fail instead (the runner watches them).
        if let Some(p) = pod.str("restartPolicy")? {
            if p != "Always" {
                bail!(
                    "{}: {p} (a DaemonSet allows only Always)",
                    pod.at("restartPolicy")
                );
            }
        }
        let service_account = match (pod.str("serviceAccountName")?, pod.str("serviceAccount")?) {
            (Some(n), _) | (None, Some(n)) => n.to_string(),
            (None, None) => "default".to_string(),
        };
        // enableServiceLinks adds variables for the Services of the pod's namespace; there
        // are none here besides `kubernetes`, whose variables kubelet always adds.
        pod.bool("enableServiceLinks")?;
        let automount = pod.bool("automountServiceAccountToken")?.unwrap_or(true);
        let grace = pod.int("terminationGracePeriodSeconds")?.unwrap_or(30);
        let termination_grace = Duration::from_secs(grace.max(0) as u64);
        let pod_security = pod.object("securityContext")?;
        let pod_security = security::PodSecurity::parse(pod_security)?;

        let mut files = Vec::new();
        let mut host_paths = Vec::new();
        let mut volumes: BTreeMap<String, Volume> = BTreeMap::new();
        for mut v in pod.objects("volumes")? {
            let name = v.required_str("name")?.to_string();
            let volume = if let Some(mut hp) = v.object("hostPath")? {
                let path = hp.required_str("path")?.to_string();
                let kind = match hp.str("type")?.unwrap_or("") {
                    "" => HostPathKind::Unchecked,
                    "DirectoryOrCreate" => HostPathKind::DirectoryOrCreate,
                    "Directory" => HostPathKind::Directory,
                    "FileOrCreate" => HostPathKind::FileOrCreate,
                    "File" => HostPathKind::File,
                    other => bail!(
                        "{}: {other} not supported by the netns cluster",
                        hp.at("type")
                    ),
                };
                let source = self.node.host_root.join(relative(&path, &hp.at("path"))?);
                hp.finish()?;
                let plan = HostPathPlan { path, source, kind };
                host_paths.push(plan.clone());
                Volume::HostPath(plan)
            } else if let Some(cm) = v.object("configMap")? {
                let dir = self.node.pod_dir.join("volumes").join(&name);
                files.extend(self.configmap_files(cm, &dir)?);
                Volume::Files(dir)
            } else {
                // Any other volume source (emptyDir, secret, ...) is a key not read:
                // finish() names it.
                let at = v.path.clone();
                v.finish()?;
                bail!("{at}: no volume source");
            };
            v.finish()?;
            volumes.insert(name, volume);
        }
        let service_account_dir = if automount {
            let dir = self.node.pod_dir.join("volumes").join("kube-api-access");
            for (file, content) in [
                ("token", self.api.token.as_str()),
                ("ca.crt", self.api.ca_pem.as_str()),
                ("namespace", self.namespace.as_str()),
            ] {
                files.push(FilePlan {
                    path: dir.join(file),
                    content: content.to_string(),
                    mode: 0o644,
                });
            }
            Some(dir)
        } else {
            None
        };
        let scope = PodScope {
            volumes,
            service_account_dir,
            env_base: self.kubernetes_service_env(),
            fields: PodFieldValues {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                node_name: self.node.name.clone(),
                service_account,
                host_ip: self.host_ip()?,
            },
            security: pod_security,
        };
        let mut image = None;
        let mut plan_containers = |key: &str, pod: &mut Fields| -> Result<Vec<ContainerPlan>> {
            let mut out = Vec::new();
            for c in pod.objects(key)? {
                let (plan, c_image) = self.container(c, &scope)?;
                match &image {
                    None => image = Some(c_image),
                    Some(i) if *i == c_image => {}
                    Some(i) => bail!(
                        "{}: image {c_image} differs from {i}; the netns cluster runs one image \
                         (the OCI layout it was given)",
                        pod.at(key)
                    ),
                }
                out.push(plan);
            }
            Ok(out)
        };
        let init_containers = plan_containers("initContainers", pod)?;
        let containers = plan_containers("containers", pod)?;
        if containers.is_empty() {
            bail!("{}: no containers", pod.at("containers"));
        }
        Ok(PodPlan {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            image: image.unwrap_or_default(),
            init_containers,
            containers,
            host_paths,
            files,
            termination_grace,
        })
    }

    /// The variables kubelet gives every container for the `kubernetes` Service.
    fn kubernetes_service_env(&self) -> Vec<(String, String)> {
        let (host, port) = (self.api.host, self.api.port);
        let url_host = match host {
            IpAddr::V6(h) => format!("[{h}]"),
            IpAddr::V4(h) => h.to_string(),
        };
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), host.to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
            ("KUBERNETES_PORT".into(), format!("tcp://{url_host}:{port}")),
        ]
    }

    fn configmap_files(&self, mut cm: Fields, dir: &Path) -> Result<Vec<FilePlan>> {
        let name = cm.required_str("name")?;
        let optional = cm.bool("optional")?.unwrap_or(false);
        let default_mode = cm.int("defaultMode")?.unwrap_or(0o644) as u32;
        let data = (self.configmaps)(&self.namespace, name).map(|o| o["data"].clone());
        let Some(data) = data else {
            if optional {
                cm.finish()?;
                return Ok(Vec::new());
            }
            bail!(
                "{}: ConfigMap {}/{name} is not in the manifests",
                cm.at("name"),
                self.namespace
            );
        };
        let mut out = Vec::new();
        let items = cm.objects("items")?;
        if items.is_empty() {
            for (key, value) in data.as_object().into_iter().flatten() {
                out.push(FilePlan {
                    path: dir.join(key),
                    content: value.as_str().unwrap_or_default().to_string(),
                    mode: default_mode,
                });
            }
        }
        for mut item in items {
            let key = item.required_str("key")?;
            let path = item.required_str("path")?;
            let mode = item.int("mode")?.map_or(default_mode, |m| m as u32);
            let Some(content) = data[key].as_str() else {
                if optional {
                    item.finish()?;
                    continue;
                }
                bail!(
                    "{}: ConfigMap {}/{name} has no key {key}",
                    item.at("key"),
                    self.namespace
                );
            };
            out.push(FilePlan {
                path: dir.join(relative(path, &item.at("path"))?),
                content: content.to_string(),
                mode,
            });
            item.finish()?;
        }
        cm.finish()?;
        Ok(out)
    }

    fn container(&self, mut c: Fields, scope: &PodScope) -> Result<(ContainerPlan, String)> {
        let env_base = &scope.env_base;
        let name = c.required_str("name")?.to_string();
        let image = c.required_str("image")?.to_string();

        // Environment, in order: each value sees the variables defined before it and the
        // Service variables (kubelet's makeEnvironmentVariables).
        let mut env: Vec<(String, String)> = Vec::new();
        for mut e in c.objects("env")? {
            let var = e.required_str("name")?.to_string();
            let value = if let Some(raw) = e.str("value")? {
                Some(expand(raw, &|n: &str| lookup(&env, env_base, n)))
            } else if let Some(mut from) = e.object("valueFrom")? {
                let v = self.value_from(&mut from, &scope.fields)?;
                from.finish()?;
                v
            } else {
                Some(String::new())
            };
            e.finish()?;
            if let Some(value) = value {
                env.retain(|(n, _)| *n != var);
                env.push((var, value));
            }
        }
        for (k, v) in env_base {
            if !env.iter().any(|(n, _)| n == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        // command and args see every variable of the container.
        let expand_all = |list: Option<Vec<String>>| {
            list.map(|l| {
                l.iter()
                    .map(|s| expand(s, &|n: &str| lookup(&env, &[], n)))
                    .collect::<Vec<_>>()
            })
        };
        let command = expand_all(c.strings("command")?);
        let args = expand_all(c.strings("args")?);
        let working_dir = c.str("workingDir")?.map(str::to_string);

        let mut mounts = Vec::new();
        for mut m in c.objects("volumeMounts")? {
            let vname = m.required_str("name")?;
            let target = m.required_str("mountPath")?;
            if !target.starts_with('/') {
                bail!("{}: must be absolute", m.at("mountPath"));
            }
            let read_only = m.bool("readOnly")?.unwrap_or(false);
            if let Some(p) = m.str("mountPropagation")? {
                if p != "None" {
                    return Err(unsupported(&m.at("mountPropagation")));
                }
            }
            let source = match scope.volumes.get(vname) {
                Some(Volume::HostPath(h)) => h.source.clone(),
                Some(Volume::Files(dir)) => dir.clone(),
                None => bail!("{}: no volume named {vname}", m.at("name")),
            };
            mounts.push(MountPlan {
                source,
                target: target.to_string(),
                read_only: read_only || matches!(scope.volumes.get(vname), Some(Volume::Files(_))),
            });
            m.finish()?;
        }
        if let Some(dir) = &scope.service_account_dir {
            mounts.push(MountPlan {
                source: dir.clone(),
                target: SERVICE_ACCOUNT_DIR.to_string(),
                read_only: true,
            });
        }

        let named_ports = Self::named_ports(&c);
        let host_ip = scope.fields.host_ip;
        let mut probe = |key: &str| -> Result<Option<HttpProbe>> {
            c.object(key)?
                .map(|p| http_probe(p, &named_ports, host_ip))
                .transpose()
        };
        let readiness = probe("readinessProbe")?;
        let liveness = probe("livenessProbe")?;
        let security = SecurityPlan::resolve(c.object("securityContext")?, &scope.security)?;
        c.finish()?;
        Ok((
            ContainerPlan {
                name,
                command,
                args,
                env,
                working_dir,
                mounts,
                security,
                readiness,
                liveness,
            },
            image,
        ))
    }

    /// `containers[].ports` names, for probes that name their port. The list itself is
    /// [`IGNORED`] otherwise (it only documents what a hostNetwork process binds).
    fn named_ports(c: &Fields) -> BTreeMap<String, u16> {
        let mut out = BTreeMap::new();
        if let Some(Value::Array(ports)) = c.map.get("ports") {
            for p in ports {
                if let (Some(n), Some(port)) = (p["name"].as_str(), p["containerPort"].as_u64()) {
                    out.insert(n.to_string(), port as u16);
                }
            }
        }
        out
    }

    fn value_from(&self, from: &mut Fields, pod_fields: &PodFieldValues) -> Result<Option<String>> {
        if let Some(mut f) = from.object("fieldRef")? {
            let path = f.required_str("fieldPath")?;
            f.str("apiVersion")?;
            let value = match path {
                "metadata.name" => pod_fields.name.clone(),
                "metadata.namespace" => pod_fields.namespace.clone(),
                "spec.nodeName" => pod_fields.node_name.clone(),
                "spec.serviceAccountName" => pod_fields.service_account.clone(),
                // A hostNetwork pod's IP is its node's.
                "status.hostIP" | "status.podIP" => pod_fields.host_ip.to_string(),
                other => bail!(
                    "{}: {other} not supported by the netns cluster",
                    f.at("fieldPath")
                ),
            };
            f.finish()?;
            return Ok(Some(value));
        }
        if let Some(mut r) = from.object("configMapKeyRef")? {
            let name = r.required_str("name")?;
            let key = r.required_str("key")?;
            let optional = r.bool("optional")?.unwrap_or(false);
            let value = (self.configmaps)(&self.namespace, name)
                .and_then(|cm| cm["data"][key].as_str().map(str::to_string));
            let at = r.at("key");
            r.finish()?;
            return match (value, optional) {
                (Some(v), _) => Ok(Some(v)),
                // An optional missing key leaves the variable unset, as kubelet does.
                (None, true) => Ok(None),
                (None, false) => bail!(
                    "{at}: ConfigMap {}/{name} has no key {key} (kubelet would refuse to start \
                     the container)",
                    self.namespace
                ),
            };
        }
        // secretKeyRef, resourceFieldRef, ...: keys not read, named by finish().
        Ok(None)
    }
}

/// What every container of the pod shares.
struct PodScope {
    volumes: BTreeMap<String, Volume>,
    service_account_dir: Option<PathBuf>,
    /// The `kubernetes` Service's variables.
    env_base: Vec<(String, String)>,
    fields: PodFieldValues,
    security: security::PodSecurity,
}

/// The values `fieldRef` can name.
struct PodFieldValues {
    name: String,
    namespace: String,
    node_name: String,
    service_account: String,
    host_ip: IpAddr,
}

fn lookup(env: &[(String, String)], base: &[(String, String)], name: &str) -> Option<String> {
    env.iter()
        .chain(base)
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// A manifest's absolute path as a path relative to a root (no `..`).
fn relative<'p>(path: &'p str, at: &str) -> Result<&'p Path> {
    let p = Path::new(path.trim_start_matches('/'));
    if p.components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("{at}: {path} must not contain '..'");
    }
    Ok(p)
}

fn http_probe(
    mut p: Fields,
    named_ports: &BTreeMap<String, u16>,
    pod_ip: IpAddr,
) -> Result<HttpProbe> {
    let mut get = p
        .object("httpGet")?
        .ok_or_else(|| unsupported(&format!("{} (only httpGet probes)", p.path)))?;
    let host = match get.str("host")? {
        Some(h) => h
            .parse()
            .map_err(|_| anyhow!("{}: {h} is not an IP address", get.at("host")))?,
        // Kubelet probes the pod IP; a hostNetwork pod's is its node's.
        None => pod_ip,
    };
    let port = match get.get("port") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| anyhow!("{}: {n} is not a port", get.at("port")))?,
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(n) => n,
            Err(_) => *named_ports
                .get(s)
                .ok_or_else(|| anyhow!("{}: no container port named {s}", get.at("port")))?,
        },
        _ => bail!("{}: missing", get.at("port")),
    };
    let path = get.str("path")?.unwrap_or("/").to_string();
    if let Some(scheme) = get.str("scheme")? {
        if scheme != "HTTP" {
            return Err(unsupported(&format!("{}: {scheme}", get.at("scheme"))));
        }
    }
    let mut headers = Vec::new();
    for mut h in get.objects("httpHeaders")? {
        let name = h.str("name")?.unwrap_or_default().to_string();
        let value = h.str("value")?.unwrap_or_default().to_string();
        h.finish()?;
        headers.push((name, value));
    }
    get.finish()?;
    let secs =
        |v: Option<i64>, default: i64| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    let probe = HttpProbe {
        host,
        port,
        path,
        headers,
        initial_delay: secs(p.int("initialDelaySeconds")?, 0),
        period: secs(p.int("periodSeconds")?, 10),
        timeout: secs(p.int("timeoutSeconds")?, 1),
        success_threshold: p.int("successThreshold")?.unwrap_or(1).max(1) as u32,
        failure_threshold: p.int("failureThreshold")?.unwrap_or(3).max(1) as u32,
    };
    p.finish()?;
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::manifests::Manifests;
    use crate::kubelet::security::{CapSet, Seccomp};
    use serde_json::json;

    fn node() -> NodeFacts {
        NodeFacts {
            name: "node-2".into(),
            ips: vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
            host_root: "/run-dir/node-2/host".into(),
            pod_dir: "/run-dir/node-2/pod".into(),
        }
    }

    fn api() -> ApiAccess {
        ApiAccess {
            host: "2001:db8::fe".parse().unwrap(),
            port: 443,
            ca_pem: "CA".into(),
            token: "TOKEN".into(),
        }
    }

    /// The shipped manifests, as `kubectl kustomize conf` renders them (the ConfigMap is
    /// generated, under a hashed name only the rendering knows).
    fn shipped() -> Manifests {
        Manifests::kustomize(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf")).unwrap()
    }

    fn plan_of(m: &Manifests) -> Result<PodPlan> {
        plan_pod(
            m.daemonset()?,
            &|ns, name| m.configmap(ns, name).cloned(),
            &node(),
            &api(),
        )
    }

    /// A small valid DaemonSet; `edit` changes it before planning.
    fn minimal(edit: impl FnOnce(&mut Value)) -> Result<PodPlan> {
        let mut ds = json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"template": {"spec": {
                "hostNetwork": true,
                "containers": [{"name": "c", "image": "img"}],
            }}},
        });
        edit(&mut ds);
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns"},
                        "data": {"k": "v"}});
        plan_pod(
            &ds,
            &|ns, name| (ns == "ns" && name == "cm").then(|| cm.clone()),
            &node(),
            &api(),
        )
    }

    fn container(ds: &mut Value) -> &mut Value {
        &mut ds["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn the_shipped_daemonset_runs_as_written() {
        let plan = plan_of(&shipped()).unwrap();
        assert_eq!(plan.namespace, "palisade-system");
        assert_eq!(plan.name, "palisade-agent-node-2");
        assert_eq!(
            plan.image,
            format!("palisade/palisade:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(plan.termination_grace, Duration::from_secs(10));

        let [install] = &plan.init_containers[..] else {
            panic!("one init container: {:?}", plan.init_containers)
        };
        assert_eq!(install.name, "install-cni");
        let cmd = install.command.as_ref().unwrap();
        assert!(cmd.contains(&"--node-name=node-2".to_string()), "{cmd:?}");
        assert!(
            install.mounts.contains(&MountPlan {
                source: "/run-dir/node-2/host/opt/cni/bin".into(),
                target: "/host/opt/cni/bin".into(),
                read_only: false,
            }),
            "{:?}",
            install.mounts
        );
        assert_eq!(install.security.capabilities, CapSet(0));

        let [agent] = &plan.containers[..] else {
            panic!("one container: {:?}", plan.containers)
        };
        let cmd = agent.command.as_ref().unwrap();
        // Every $(VAR) of the manifest is expanded from env and the ConfigMap.
        assert!(cmd.iter().all(|a| !a.contains("$(")), "{cmd:?}");
        assert!(
            cmd.contains(&"--new-pods=fail-closed".to_string()),
            "{cmd:?}"
        );
        assert!(cmd.contains(&"--node-name=node-2".to_string()), "{cmd:?}");
        let env: BTreeMap<_, _> = agent.env.iter().cloned().collect();
        assert_eq!(env["NODE_NAME"], "node-2");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "2001:db8::fe");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        let s = &agent.security;
        assert_eq!(s.run_as_user, Some(0));
        assert_eq!(s.capabilities.names(), vec!["NET_ADMIN"]);
        assert!(s.no_new_privileges && s.read_only_root);
        assert_eq!(s.seccomp, Seccomp::RuntimeDefault);
        assert!(agent
            .mounts
            .iter()
            .any(|m| m.target == SERVICE_ACCOUNT_DIR && m.read_only));
        let ready = agent.readiness.as_ref().unwrap();
        assert_eq!(
            (
                ready.host.to_string().as_str(),
                ready.port,
                ready.path.as_str()
            ),
            // No host: kubelet probes the pod IP, a hostNetwork pod's is its node's first;
            // the port is the container port named `metrics`.
            ("192.0.2.2", 9464, "/readyz")
        );
        assert_eq!(ready.period, Duration::from_secs(5));
        assert_eq!(agent.liveness.as_ref().unwrap().path, "/healthz");

        // kubelet's files: the template from the ConfigMap, the service account.
        let file = |suffix: &str| {
            plan.files
                .iter()
                .find(|f| f.path.ends_with(suffix))
                .unwrap_or_else(|| panic!("no {suffix} in {:?}", plan.files))
                .content
                .clone()
        };
        assert!(file("config/conflist.template").contains("__PALISADE_POD_CIDR_RANGES__"));
        assert_eq!(file("kube-api-access/token"), "TOKEN");
        assert_eq!(file("kube-api-access/namespace"), "palisade-system");
        let host_paths: Vec<_> = plan.host_paths.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(
            host_paths,
            ["/opt/cni/bin", "/etc/cni/net.d", "/run/palisade"]
        );
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_it() {
        let e = minimal(|ds| container(ds)["lifecycle"] = json!({"preStop": {}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.template.spec.containers[0].lifecycle: not supported by the netns cluster"
        );
        let e = minimal(|ds| ds["spec"]["template"]["spec"]["nodeSelector"] = json!({"a": "b"}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.template.spec.nodeSelector: not supported by the netns cluster"
        );
        let e = minimal(|ds| {
            ds["spec"]["template"]["spec"]["volumes"] = json!([{"name": "v", "emptyDir": {}}])
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.template.spec.volumes[0].emptyDir: not supported by the netns cluster"
        );
        let e = minimal(|ds| {
            container(ds)["env"] =
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef: not supported by \
             the netns cluster"
        );
        let e = minimal(|ds| {
            container(ds)["securityContext"] = json!({"capabilities": {"add": ["NET_ADMIN"]},
                                                      "seLinuxOptions": {"level": "s0"}})
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.template.spec.containers[0].securityContext.seLinuxOptions: not supported by \
             the netns cluster"
        );
        let e =
            minimal(|ds| ds["spec"]["template"]["spec"]["hostNetwork"] = json!(false)).unwrap_err();
        assert!(e.to_string().contains("only hostNetwork pods"), "{e}");
    }

    #[test]
    fn ignored_fields_are_listed_with_a_reason() {
        minimal(|ds| {
            container(ds)["resources"] = json!({"limits": {"memory": "1Gi"}});
            ds["spec"]["template"]["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
            ds["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        })
        .unwrap();
        for (path, why) in IGNORED {
            assert!(!why.is_empty() && !path.is_empty());
        }
    }

    #[test]
    fn env_and_command_expand_as_kubelet_does() {
        let plan = minimal(|ds| {
            let c = container(ds);
            c["env"] = json!([
                {"name": "A", "value": "a"},
                // Sees A (defined before) but not C (defined after).
                {"name": "B", "value": "$(A)-$(C)-$$(A)"},
                {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                {"name": "D", "valueFrom": {"configMapKeyRef":
                    {"name": "cm", "key": "missing", "optional": true}}},
                {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            ]);
            c["command"] = json!(["/bin/x", "--b=$(B)", "--c=$(C)", "--d=$(D)"]);
            c["args"] = json!(["$(N)", "$(IP)", "$(KUBERNETES_SERVICE_PORT)"]);
        })
        .unwrap();
        let c = &plan.containers[0];
        let env: BTreeMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(env["B"], "a-$(C)-$(A)");
        assert!(!env.contains_key("D"));
        assert_eq!(
            c.command.as_deref().unwrap(),
            ["/bin/x", "--b=a-$(C)-$(A)", "--c=v", "--d=$(D)"]
        );
        assert_eq!(c.args.as_deref().unwrap(), ["node-2", "192.0.2.2", "443"]);
    }

    #[test]
    fn a_missing_configmap_key_is_an_error() {
        let e = minimal(|ds| {
            container(ds)["env"] = json!([{"name": "X", "valueFrom":
                {"configMapKeyRef": {"name": "cm", "key": "nope"}}}])
        })
        .unwrap_err();
        assert!(e.to_string().contains("has no key nope"), "{e}");
    }

    #[test]
    fn capabilities_start_from_the_runtime_default() {
        let plan = minimal(|ds| {
            container(ds)["securityContext"] =
                json!({"capabilities": {"drop": ["NET_RAW", "CHOWN"], "add": ["NET_ADMIN"]}});
        })
        .unwrap();
        let names = plan.containers[0].security.capabilities.names();
        assert!(names.contains(&"NET_ADMIN".to_string()));
        assert!(names.contains(&"KILL".to_string()));
        assert!(!names.contains(&"NET_RAW".to_string()) && !names.contains(&"CHOWN".to_string()));
        let e = minimal(|ds| {
            container(ds)["securityContext"] = json!({"capabilities": {"add": ["NET_WIZARD"]}});
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown capability NET_WIZARD"),
            "{e:#}"
        );
        // Unset: no no_new_privs, no seccomp filter, writable root (Kubernetes' defaults).
        let s = minimal(|_| {}).unwrap().containers[0].security.clone();
        assert!(!s.no_new_privileges && !s.read_only_root);
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        let e = minimal(|ds| {
            container(ds)["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 0});
        })
        .unwrap_err();
        assert!(e.to_string().contains("runAsNonRoot"), "{e}");
    }

    #[test]
    fn two_images_are_an_error() {
        let e = minimal(|ds| {
            ds["spec"]["template"]["spec"]["initContainers"] =
                json!([{"name": "i", "image": "other"}]);
        })
        .unwrap_err();
        assert!(e.to_string().contains("runs one image"), "{e}");
    }
}
