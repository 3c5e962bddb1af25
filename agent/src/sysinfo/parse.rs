//! Parsers for the /proc and /etc files sysinfo reads, apart from the reading
//! so they can be tested on fixed text.

/// (model name, logical CPU count) from /proc/cpuinfo.
pub fn cpuinfo(text: &str) -> (String, u32) {
    let mut model = String::new();
    let mut count = 0u32;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            "model name" if model.is_empty() => model = v.trim().to_string(),
            _ => {}
        }
    }
    (model, count)
}

/// A field of /proc/meminfo in bytes (the file counts in kB).
pub fn meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// The 1-minute load from /proc/loadavg.
pub fn loadavg(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Seconds since boot from /proc/uptime.
pub fn uptime(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|f| f as u64)
        .unwrap_or(0)
}

/// PRETTY_NAME from /etc/os-release.
pub fn os_release(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_default()
}

/// DEVTYPE from a /sys/class/net/<nic>/uevent file.
pub fn devtype(uevent: &str) -> Option<String> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVTYPE="))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_gives_the_model_and_counts_processors() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpuinfo(text), ("AMD EPYC 7B13".to_string(), 2));
    }

    #[test]
    fn meminfo_fields_are_converted_from_kb() {
        let text = "MemTotal:       24608164 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo(text, "MemTotal"), Some(24608164 * 1024));
        assert_eq!(meminfo(text, "MemAvailable"), Some(22000000 * 1024));
        assert_eq!(meminfo(text, "Mem"), None);
        assert_eq!(meminfo(text, "SwapTotal"), None);
    }

    #[test]
    fn small_proc_files_parse() {
        assert_eq!(loadavg("0.52 0.40 0.31 1/234 5678\n"), 0.52);
        assert_eq!(uptime("12345.67 2345.00\n"), 12345);
        assert_eq!(
            os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(
            devtype("INTERFACE=br0\nIFINDEX=5\nDEVTYPE=bridge\n").as_deref(),
            Some("bridge")
        );
        assert_eq!(devtype("INTERFACE=eth0\n"), None);
    }
}
