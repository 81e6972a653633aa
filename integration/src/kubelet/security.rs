//! A container's `securityContext` (merged with the pod's), what the runtime must make of it,
//! and the check that the running process really got exactly that: its capabilities
//! (`CapEff`, `CapBnd` in `/proc/PID/status`), `NoNewPrivs`, its seccomp mode and whether its
//! root is mounted read-only.

use super::fields::{unsupported, Fields};
use anyhow::{anyhow, bail, Context, Result};
use caps::Capability;
use std::str::FromStr;

/// The capabilities a container gets when it drops nothing: containerd's default set for
/// Kubernetes containers (kind runs containerd). Podman's own default differs, so the runner
/// always drops ALL and adds the resolved set itself.
pub const RUNTIME_DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// A set of capabilities as the kernel shows it (bit N = capability N).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn of(caps: &[Capability]) -> CapSet {
        CapSet(caps.iter().fold(0, |m, c| m | c.bitmask()))
    }

    pub fn all() -> CapSet {
        CapSet::of(&caps::all().into_iter().collect::<Vec<_>>())
    }

    /// The capabilities in the set, by number.
    pub fn capabilities(self) -> Vec<Capability> {
        let mut all: Vec<Capability> = caps::all()
            .into_iter()
            .filter(|c| self.0 & c.bitmask() != 0)
            .collect();
        all.sort_by_key(Capability::index);
        all
    }

    /// Names as the manifests write them (`NET_ADMIN`).
    pub fn names(self) -> Vec<String> {
        self.capabilities()
            .iter()
            .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
            .collect()
    }
}

impl std::fmt::Display for CapSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.names();
        write!(
            f,
            "{:016x} ({})",
            self.0,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    /// The runtime's default filter.
    RuntimeDefault,
    /// No filter (Kubernetes' default when neither pod nor container names a profile).
    Unconfined,
}

/// The pod-level `securityContext` fields that containers inherit.
#[derive(Debug, Clone, Default)]
pub struct PodSecurity {
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    run_as_non_root: Option<bool>,
    seccomp: Option<Seccomp>,
}

/// The fields both levels share.
struct Common {
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    run_as_non_root: Option<bool>,
    seccomp: Option<Seccomp>,
}

fn common(f: &mut Fields) -> Result<Common> {
    let id = |f: &mut Fields, key: &str| -> Result<Option<u32>> {
        f.int(key)?
            .map(|v| u32::try_from(v).map_err(|_| anyhow!("{}: {v} is not a valid id", f.at(key))))
            .transpose()
    };
    let seccomp = match f.object("seccompProfile")? {
        None => None,
        Some(mut p) => {
            let t = match p.str("type")? {
                Some("RuntimeDefault") => Seccomp::RuntimeDefault,
                Some("Unconfined") => Seccomp::Unconfined,
                Some(other) => bail!(
                    "{}: {other} not supported by the netns cluster",
                    p.at("type")
                ),
                None => bail!("{}: missing", p.at("type")),
            };
            p.finish()?;
            Some(t)
        }
    };
    Ok(Common {
        run_as_user: id(f, "runAsUser")?,
        run_as_group: id(f, "runAsGroup")?,
        run_as_non_root: f.bool("runAsNonRoot")?,
        seccomp,
    })
}

impl PodSecurity {
    pub(super) fn parse(fields: Option<Fields>) -> Result<PodSecurity> {
        let Some(mut f) = fields else {
            return Ok(PodSecurity::default());
        };
        let c = common(&mut f)?;
        f.finish()?;
        Ok(PodSecurity {
            run_as_user: c.run_as_user,
            run_as_group: c.run_as_group,
            run_as_non_root: c.run_as_non_root,
            seccomp: c.seccomp,
        })
    }
}

/// What one container runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityPlan {
    /// None: the image's user.
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    /// The capabilities granted: the bounding set, and for root also the effective one.
    pub capabilities: CapSet,
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
    pub read_only_root: bool,
}

impl SecurityPlan {
    pub(super) fn resolve(fields: Option<Fields>, pod: &PodSecurity) -> Result<SecurityPlan> {
        let mut plan = SecurityPlan {
            run_as_user: pod.run_as_user,
            run_as_group: pod.run_as_group,
            run_as_non_root: pod.run_as_non_root.unwrap_or(false),
            capabilities: CapSet::of(RUNTIME_DEFAULT_CAPS),
            no_new_privileges: false,
            seccomp: pod.seccomp.unwrap_or(Seccomp::Unconfined),
            read_only_root: false,
        };
        if let Some(mut f) = fields {
            let c = common(&mut f)?;
            plan.run_as_user = c.run_as_user.or(plan.run_as_user);
            plan.run_as_group = c.run_as_group.or(plan.run_as_group);
            plan.run_as_non_root = c.run_as_non_root.unwrap_or(plan.run_as_non_root);
            plan.seccomp = c.seccomp.unwrap_or(plan.seccomp);
            // Unset means allowed (no no_new_privs), as in Kubernetes.
            plan.no_new_privileges = f.bool("allowPrivilegeEscalation")? == Some(false);
            plan.read_only_root = f.bool("readOnlyRootFilesystem")?.unwrap_or(false);
            if f.bool("privileged")? == Some(true) {
                return Err(unsupported(&format!("{}: true", f.at("privileged"))));
            }
            if let Some(m) = f.str("procMount")? {
                if m != "Default" {
                    return Err(unsupported(&format!("{}: {m}", f.at("procMount"))));
                }
            }
            if let Some(mut caps) = f.object("capabilities")? {
                let parse = |caps: &mut Fields, key: &str| -> Result<Vec<String>> {
                    let at = caps.at(key);
                    let names = caps.strings(key)?.unwrap_or_default();
                    for n in &names {
                        if n != "ALL" {
                            capability(n).with_context(|| at.clone())?;
                        }
                    }
                    Ok(names)
                };
                let drop = parse(&mut caps, "drop")?;
                let add = parse(&mut caps, "add")?;
                caps.finish()?;
                let mut set = plan.capabilities.0;
                for n in &drop {
                    set &= if n == "ALL" {
                        0
                    } else {
                        !capability(n)?.bitmask()
                    };
                }
                for n in &add {
                    set |= if n == "ALL" {
                        CapSet::all().0
                    } else {
                        capability(n)?.bitmask()
                    };
                }
                plan.capabilities = CapSet(set);
            }
            f.finish()?;
        }
        if plan.run_as_non_root && plan.run_as_user == Some(0) {
            bail!("runAsNonRoot is true but runAsUser is 0 (kubelet refuses to start it)");
        }
        Ok(plan)
    }

    /// Whether `process` runs exactly as planned. `uid` is the user it must run as (the
    /// plan's, or the image's when the plan names none). Every mismatch is reported.
    pub fn check(&self, process: &ProcessSecurity, uid: u32) -> Result<()> {
        let mut wrong = Vec::new();
        if process.uid != uid {
            wrong.push(format!("runs as uid {}, expected {uid}", process.uid));
        }
        // Kubernetes grants added capabilities to non-root users only in the bounding set
        // (no ambient capabilities).
        let effective = if uid == 0 {
            self.capabilities
        } else {
            CapSet(0)
        };
        if process.cap_eff != effective {
            wrong.push(format!("CapEff {}, expected {effective}", process.cap_eff));
        }
        if process.cap_bnd != self.capabilities {
            wrong.push(format!(
                "CapBnd {}, expected {}",
                process.cap_bnd, self.capabilities
            ));
        }
        if process.no_new_privs != self.no_new_privileges {
            wrong.push(format!(
                "NoNewPrivs {}, expected {}",
                u8::from(process.no_new_privs),
                u8::from(self.no_new_privileges)
            ));
        }
        let seccomp = match self.seccomp {
            Seccomp::RuntimeDefault => 2,
            Seccomp::Unconfined => 0,
        };
        if process.seccomp != seccomp {
            wrong.push(format!("Seccomp {}, expected {seccomp}", process.seccomp));
        }
        if process.root_read_only != self.read_only_root {
            wrong.push(format!(
                "root file system {}, expected {}",
                if process.root_read_only {
                    "read-only"
                } else {
                    "writable"
                },
                if self.read_only_root {
                    "read-only"
                } else {
                    "writable"
                }
            ));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            bail!("{}", wrong.join("; "))
        }
    }
}

/// `NET_ADMIN` (or `CAP_NET_ADMIN`) as a capability.
fn capability(name: &str) -> Result<Capability> {
    let full = if name.starts_with("CAP_") {
        name.to_string()
    } else {
        format!("CAP_{name}")
    };
    Capability::from_str(&full).map_err(|_| anyhow!("unknown capability {name}"))
}

/// What the kernel says about a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSecurity {
    pub uid: u32,
    pub cap_eff: CapSet,
    pub cap_bnd: CapSet,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    pub root_read_only: bool,
}

impl std::fmt::Display for ProcessSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uid {}, CapEff {}, CapBnd {}, NoNewPrivs {}, Seccomp {}, root {}",
            self.uid,
            self.cap_eff,
            self.cap_bnd,
            u8::from(self.no_new_privs),
            self.seccomp,
            if self.root_read_only { "ro" } else { "rw" }
        )
    }
}

impl ProcessSecurity {
    /// Read `/proc/PID/status` and `/proc/PID/mountinfo`.
    pub fn read(pid: u32) -> Result<ProcessSecurity> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .with_context(|| format!("read /proc/{pid}/mountinfo"))?;
        ProcessSecurity::parse(&status, &mountinfo).with_context(|| format!("process {pid}"))
    }

    pub fn parse(status: &str, mountinfo: &str) -> Result<ProcessSecurity> {
        let field = |name: &str| -> Result<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or_else(|| anyhow!("no {name} in /proc/PID/status"))
        };
        let hex = |name: &str| -> Result<CapSet> {
            let v = field(name)?;
            u64::from_str_radix(v, 16)
                .map(CapSet)
                .map_err(|_| anyhow!("{name}: {v} is not hex"))
        };
        let uid = field("Uid")?
            .split_whitespace()
            // Real, effective, saved, fs: the effective one decides.
            .nth(1)
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| anyhow!("malformed Uid line"))?;
        // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...; the last mount on "/" is
        // the one the process sees.
        let root_options = mountinfo
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(4) == Some(&"/")).then(|| f.get(5).copied().unwrap_or_default())
            })
            .next_back()
            .ok_or_else(|| anyhow!("no mount on / in mountinfo"))?;
        Ok(ProcessSecurity {
            uid,
            cap_eff: hex("CapEff")?,
            cap_bnd: hex("CapBnd")?,
            no_new_privs: field("NoNewPrivs")? == "1",
            seccomp: field("Seccomp")?
                .parse()
                .map_err(|_| anyhow!("malformed Seccomp line"))?,
            root_read_only: root_options.split(',').any(|o| o == "ro"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpalisade-agent\nUid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n\
CapPrm:\t0000000000001000\nCapEff:\t0000000000001000\nCapBnd:\t0000000000001000\n\
CapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
    const MOUNTINFO: &str = "74 49 254:0 /tmp/x/vfs/dir/fb80 / ro,relatime - ext4 /dev/vda rw\n\
75 74 0:42 / /sys ro,nosuid - sysfs sysfs ro\n";

    fn agent_plan() -> SecurityPlan {
        SecurityPlan {
            run_as_user: Some(0),
            run_as_group: None,
            run_as_non_root: false,
            capabilities: CapSet::of(&[Capability::CAP_NET_ADMIN]),
            no_new_privileges: true,
            seccomp: Seccomp::RuntimeDefault,
            read_only_root: true,
        }
    }

    #[test]
    fn reads_what_the_kernel_shows() {
        let p = ProcessSecurity::parse(STATUS, MOUNTINFO).unwrap();
        assert_eq!(p.uid, 0);
        assert_eq!(p.cap_eff.names(), vec!["NET_ADMIN"]);
        assert!(p.no_new_privs && p.root_read_only);
        assert_eq!(p.seccomp, 2);
        agent_plan().check(&p, 0).unwrap();
    }

    #[test]
    fn every_difference_is_reported() {
        let status = STATUS
            .replace("CapEff:\t0000000000001000", "CapEff:\t0000000000003000")
            .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        let p = ProcessSecurity::parse(&status, &MOUNTINFO.replace(" ro,relatime", " rw")).unwrap();
        let e = agent_plan().check(&p, 0).unwrap_err().to_string();
        assert!(
            e.contains("CapEff 0000000000003000 (NET_ADMIN, NET_RAW)"),
            "{e}"
        );
        assert!(e.contains("NoNewPrivs 0, expected 1"), "{e}");
        assert!(
            e.contains("root file system writable, expected read-only"),
            "{e}"
        );
        // A non-root user holds added capabilities only in the bounding set.
        let e = agent_plan().check(&p, 1000).unwrap_err().to_string();
        assert!(e.contains("runs as uid 0, expected 1000"), "{e}");
        assert!(e.contains("expected 0000000000000000 (none)"), "{e}");
    }
}
