//! sysctls through `/proc/sys`. `/proc/sys/net` shows the namespace of the thread that opens
//! the file: call these for the pod from inside `palisade_kernel::Netns::run`.

use crate::error::CniError;
use std::io;

fn path_of(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// `net.ipv4.conf.<if>.rp_filter`-style key for an interface (interface names may contain
/// dots, so they are spliced in as a path component, not through `path_of`).
pub fn if_path(family: &str, ifname: &str, leaf: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{ifname}/{leaf}")
}

/// Write `value` to the sysctl file `path` unless it already holds it (writing
/// `ipv6.conf.all.forwarding` has side effects on every interface even when unchanged).
pub fn ensure_path(path: &str, value: &str) -> Result<(), CniError> {
    let err = |source: io::Error| CniError::Sysctl {
        path: path.to_string(),
        source,
    };
    if std::fs::read_to_string(path).map_err(err)?.trim() == value {
        return Ok(());
    }
    std::fs::write(path, value).map_err(err)
}

/// The value of a dotted key such as `net.ipv4.ip_forward`, without the trailing newline.
pub fn read(key: &str) -> Result<String, CniError> {
    let path = path_of(key);
    match std::fs::read_to_string(&path) {
        Ok(v) => Ok(v.trim().to_string()),
        Err(source) => Err(CniError::Sysctl { path, source }),
    }
}

/// [`ensure_path`] for a dotted key such as `net.ipv4.ip_forward`.
pub fn ensure(key: &str, value: &str) -> Result<(), CniError> {
    ensure_path(&path_of(key), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            path_of("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            if_path("ipv6", "eth0.10", "accept_dad"),
            "/proc/sys/net/ipv6/conf/eth0.10/accept_dad"
        );
    }
}
