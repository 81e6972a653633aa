//! CNI spec versions: which ones we speak and how one is chosen for an invocation.

use crate::error::{CniError, Result};

/// The spec versions this plugin implements, oldest first. 0.3.0 and 0.3.1 share a result
/// shape; 0.4.0 added CHECK; 1.0.0 dropped `ips[].version`; 1.1.0 added GC, STATUS and
/// `cniVersions`.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version, used when nothing else tells which one to speak.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch` version, ordered numerically ("0.10.0" > "0.4.0").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecVersion(pub u32, pub u32, pub u32);

impl SpecVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = SpecVersion(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

/// The negotiated version of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniVersion {
    text: &'static str,
    parsed: SpecVersion,
}

impl CniVersion {
    pub fn latest() -> Self {
        Self::supported(LATEST).expect("LATEST is supported")
    }

    /// `Some` when `s` is one of [`SUPPORTED`].
    pub fn supported(s: &str) -> Option<Self> {
        SUPPORTED.iter().find(|v| **v == s).map(|v| CniVersion {
            text: v,
            parsed: SpecVersion::parse(v).expect("valid"),
        })
    }

    pub fn as_str(&self) -> &'static str {
        self.text
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`.
    pub fn has_ip_version_field(&self) -> bool {
        self.parsed < SpecVersion(1, 0, 0)
    }

    /// CHECK exists from 0.4.0 on.
    pub fn supports_check(&self) -> bool {
        self.parsed >= SpecVersion(0, 4, 0)
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn supports_gc_and_status(&self) -> bool {
        self.parsed >= SpecVersion(1, 1, 0)
    }

    /// Whether `command` exists in this version (CHECK from 0.4.0, GC and STATUS from 1.1.0).
    pub fn has_command(&self, command: &str) -> bool {
        match command {
            "CHECK" => self.supports_check(),
            "GC" | "STATUS" => self.supports_gc_and_status(),
            _ => true,
        }
    }

    /// The newest version we speak that is no newer than `self` and that `theirs` (another
    /// plugin's `supportedVersions`) lists: how to call a plugin older than the config.
    pub fn highest_common(&self, theirs: &[String]) -> Option<CniVersion> {
        theirs
            .iter()
            .filter_map(|v| CniVersion::supported(v))
            .filter(|v| v.parsed <= self.parsed)
            .max_by_key(|v| v.parsed)
    }

    /// 1.1.0 added `mtu` (and more) to interfaces.
    pub fn has_interface_mtu(&self) -> bool {
        self.parsed >= SpecVersion(1, 1, 0)
    }
}

/// Choose the version of an invocation from the config's `cniVersion` and `cniVersions`.
///
/// A runtime executing a list replaces every plugin's `cniVersion` with the list's (SPEC.md
/// "Network Configuration Lists"), so `cniVersion`, when present, is authoritative and must
/// be supported. Without it, a 1.1 `cniVersions` list is honoured: the highest version we
/// share. With neither, the spec's default is 0.1.0, which we do not support.
pub fn negotiate(cni_version: Option<&str>, cni_versions: Option<&[String]>) -> Result<CniVersion> {
    if let Some(v) = cni_version {
        return CniVersion::supported(v).ok_or_else(|| {
            CniError::IncompatibleVersion(format!(
                "cniVersion {v:?} is not supported (supported: {})",
                SUPPORTED.join(", ")
            ))
        });
    }
    if let Some(list) = cni_versions {
        return list
            .iter()
            .filter_map(|v| CniVersion::supported(v))
            .max_by_key(|v| v.parsed)
            .ok_or_else(|| {
                CniError::IncompatibleVersion(format!(
                    "none of cniVersions {list:?} is supported (supported: {})",
                    SUPPORTED.join(", ")
                ))
            });
    }
    Err(CniError::IncompatibleVersion(
        "config has neither cniVersion nor cniVersions (implies 0.1.0, not supported)".into(),
    ))
}

/// The VERSION command's answer.
pub fn version_info(requested: Option<&str>) -> serde_json::Value {
    let v = requested
        .and_then(CniVersion::supported)
        .unwrap_or_else(CniVersion::latest);
    serde_json::json!({ "cniVersion": v.as_str(), "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_negotiates_to_itself() {
        for v in SUPPORTED {
            assert_eq!(negotiate(Some(v), None).unwrap().as_str(), v);
        }
    }

    #[test]
    fn unsupported_versions_are_code_1() {
        for v in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "", "1.0", "banana"] {
            let e = negotiate(Some(v), None).unwrap_err();
            assert_eq!(e.code(), 1, "{v}");
        }
        assert_eq!(negotiate(None, None).unwrap_err().code(), 1);
    }

    #[test]
    fn cni_versions_list_picks_the_highest_common_version() {
        let list: Vec<String> = ["0.4.0", "1.0.0", "1.1.0", "9.9.9"]
            .map(String::from)
            .to_vec();
        assert_eq!(negotiate(None, Some(&list)).unwrap().as_str(), "1.1.0");
        let list: Vec<String> = ["0.3.1", "0.4.0", "0.2.0"].map(String::from).to_vec();
        assert_eq!(negotiate(None, Some(&list)).unwrap().as_str(), "0.4.0");
        let list: Vec<String> = ["0.1.0", "2.0.0"].map(String::from).to_vec();
        assert_eq!(negotiate(None, Some(&list)).unwrap_err().code(), 1);
        // cniVersion, set by the runtime for a list, wins over the list.
        let list: Vec<String> = ["1.1.0"].map(String::from).to_vec();
        assert_eq!(
            negotiate(Some("1.0.0"), Some(&list)).unwrap().as_str(),
            "1.0.0"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(SpecVersion::parse("0.10.0").unwrap() > SpecVersion::parse("0.4.0").unwrap());
        assert_eq!(SpecVersion::parse("1.0"), None);
        assert_eq!(SpecVersion::parse("1.0.0.0"), None);
    }

    #[test]
    fn feature_gates_follow_the_spec() {
        let v = |s| CniVersion::supported(s).unwrap();
        assert!(!v("0.3.1").supports_check());
        assert!(v("0.4.0").supports_check());
        assert!(v("0.4.0").has_ip_version_field());
        assert!(!v("1.0.0").has_ip_version_field());
        assert!(!v("1.0.0").supports_gc_and_status());
        assert!(v("1.1.0").supports_gc_and_status());
    }

    #[test]
    fn highest_common_version_is_no_newer_than_ours() {
        let v = |s| CniVersion::supported(s).unwrap();
        let host_local: Vec<String> = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            v("1.1.0").highest_common(&host_local).unwrap().as_str(),
            "1.0.0"
        );
        assert_eq!(
            v("0.4.0").highest_common(&host_local).unwrap().as_str(),
            "0.4.0"
        );
        let newer: Vec<String> = ["1.1.0", "1.2.0"].map(String::from).to_vec();
        assert!(v("1.0.0").highest_common(&newer).is_none());
        let ancient: Vec<String> = ["0.1.0", "0.2.0"].map(String::from).to_vec();
        assert!(v("1.1.0").highest_common(&ancient).is_none());
        assert!(!v("1.0.0").has_command("GC") && v("1.0.0").has_command("CHECK"));
    }

    #[test]
    fn version_command_lists_all_versions() {
        let j = version_info(Some("0.4.0"));
        assert_eq!(j["cniVersion"], "0.4.0");
        assert_eq!(
            j["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
        assert_eq!(version_info(Some("0.1.0"))["cniVersion"], LATEST);
        assert_eq!(version_info(None)["cniVersion"], LATEST);
    }
}
