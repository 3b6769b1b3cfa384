//! What a process uses, read from `/proc/<pid>`: resident memory, threads, open descriptors.

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// `Threads`.
    pub threads: u64,
    /// Entries of `/proc/<pid>/fd`.
    pub fds: u64,
}

/// `VmRSS` (bytes) and `Threads` from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let mut rss = None;
    let mut threads = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let unit = parts.next().unwrap_or("kB");
            rss = Some(match unit {
                "kB" => value * 1024,
                "mB" | "MB" => value * 1024 * 1024,
                _ => value,
            });
        } else if let Some(rest) = line.strip_prefix("Threads:") {
            threads = rest.trim().parse().ok();
        }
    }
    Some((rss?, threads?))
}

/// Reads `/proc/<pid>`; `None` when the process is gone (or this is not Linux).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (rss_bytes, threads) = parse_status(&status)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(ProcSample { rss_bytes, threads, fds })
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_threads_from_status() {
        let text = "Name:\tvoice-kraliki\nState:\tS (sleeping)\nVmPeak:\t  900000 kB\nVmRSS:\t   31744 kB\nRssAnon:\t 20000 kB\nThreads:\t7\nSigQ:\t0/95000\n";
        assert_eq!(parse_status(text), Some((31744 * 1024, 7)));
        // A kernel thread has no VmRSS line: no reading rather than a zero.
        assert_eq!(parse_status("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(parse_status("VmRSS:\t12 kB\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("/proc/self");
        assert!(s.rss_bytes > 1024 * 1024, "{s:?}");
        assert!(s.threads >= 1 && s.fds >= 3, "{s:?}");
        assert!(sample(u32::MAX).is_none());
    }
}
