//! The plugin's optional log file, for an operator debugging a node: `logFile` (an absolute
//! path) and `logLevel` (`error`, `info` (default), `debug`) in the plugin's config. Off by
//! default, and never on stdout, which belongs to the runtime (the result JSON); a log file
//! that cannot be written never fails the command.
//!
//! `info` writes one line per invocation: the command, the attachment, the pod from
//! `CNI_ARGS`, the outcome (the IPs, or the error's code and message) and how long it took.
//! `debug` adds the steps worth knowing (the delegated IPAM's version, the config received).
//!
//! Each line is one `write(2)` to a file opened with `O_APPEND`, so concurrent invocations
//! never interleave within a line; the file is opened anew by every invocation, so renaming
//! it (logrotate without copytruncate) starts a new one.
//!
//! Hand-rolled rather than `tracing`: the plugin is a static binary run once per pod
//! operation, and this is one line per run.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Info,
    Debug,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// `logFile` and `logLevel` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConf {
    pub file: PathBuf,
    pub level: Level,
}

struct LogFile {
    file: Mutex<std::fs::File>,
    level: Level,
}

static LOG: OnceLock<Option<LogFile>> = OnceLock::new();

/// Open the log file (its directory created) for the rest of this process. Only the first
/// call counts; a file that cannot be opened means no log.
pub fn init(conf: Option<&LogConf>) {
    LOG.get_or_init(|| {
        let conf = conf?;
        if let Some(dir) = conf.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&conf.file)
            .ok()?;
        Some(LogFile {
            file: Mutex::new(file),
            level: conf.level,
        })
    });
}

/// Whether a line at `level` would be written.
pub fn enabled(level: Level) -> bool {
    LOG.get()
        .and_then(Option::as_ref)
        .is_some_and(|l| level <= l.level)
}

/// Write one line at `level`: `<RFC 3339 UTC time> <LEVEL> palisade[<pid>] <message>`.
pub fn write(level: Level, message: fmt::Arguments<'_>) {
    let Some(log) = LOG.get().and_then(Option::as_ref) else {
        return;
    };
    if level > log.level {
        return;
    }
    let mut line = format!(
        "{} {} palisade[{}] {message}",
        utc_now(),
        level.name(),
        std::process::id()
    );
    // One record per line, whatever the message holds.
    line = line.replace('\n', " ");
    line.push('\n');
    let mut file = log.file.lock().unwrap_or_else(|e| e.into_inner());
    let _ = file.write_all(line.as_bytes());
}

pub fn debug(message: fmt::Arguments<'_>) {
    write(Level::Debug, message);
}

/// `2026-12-07T09:10:35.123Z`
fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now.as_secs() as i64, now.subsec_millis())
}

/// Seconds since the epoch as an RFC 3339 UTC time with milliseconds. Days to a civil date
/// by Howard Hinnant's `civil_from_days` (proleptic Gregorian calendar), to keep a date
/// crate out of the static plugin for one timestamp per line.
pub fn format_utc(secs: i64, millis: u32) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        // date -u -d @951782400: the leap day of a year divisible by 400.
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_796_634_635, 123), "2026-12-07T09:10:35.123Z");
        assert_eq!(format_utc(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn levels() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("warn"), None);
        assert!(Level::Error < Level::Info && Level::Info < Level::Debug);
    }
}
