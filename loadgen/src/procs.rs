//! What a run costs the machine, read from `/proc` (Linux): CPU seconds of the whole
//! machine and of named processes over a window, and each process's peak resident
//! memory (`VmHWM`, the kernel's high-water mark since the process started).

use anyhow::Context;
use serde_json::{Value, json};

/// A process the benchmark watches: `NAME=PID` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl std::str::FromStr for Watched {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
        let pid = pid.parse().map_err(|_| format!("{pid:?} is not a process id"))?;
        if name.is_empty() {
            return Err("expected NAME=PID".into());
        }
        Ok(Watched { name: name.to_owned(), pid })
    }
}

/// CPU time used so far: by the whole machine (every core's busy time) and by each
/// watched process, in seconds.
#[derive(Debug, Clone)]
pub struct CpuSample {
    machine: f64,
    processes: Vec<f64>,
}

/// The kernel's clock ticks per second for `/proc` times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

impl CpuSample {
    pub fn take(watched: &[Watched]) -> anyhow::Result<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let machine = machine_busy_ticks(&stat).context("no cpu line in /proc/stat")? / TICKS;
        let mut processes = Vec::new();
        for w in watched {
            let text = std::fs::read_to_string(format!("/proc/{}/stat", w.pid))
                .with_context(|| format!("reading /proc/{}/stat ({})", w.pid, w.name))?;
            processes.push(process_ticks(&text).with_context(|| format!("parsing /proc/{}/stat", w.pid))? / TICKS);
        }
        Ok(CpuSample { machine, processes })
    }

    /// CPU seconds from `earlier` to `self`: `(machine, per watched process)`.
    pub fn since(&self, earlier: &CpuSample) -> (f64, Vec<f64>) {
        let per = self.processes.iter().zip(&earlier.processes).map(|(now, then)| now - then).collect();
        (self.machine - earlier.machine, per)
    }
}

/// Busy ticks of the `cpu` line of `/proc/stat`: everything but idle and iowait
/// (guest time is already counted in user).
fn machine_busy_ticks(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    (fields.len() >= 8).then_some(busy)
}

/// utime + stime of a `/proc/PID/stat` line (fields 14 and 15; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis).
fn process_ticks(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3), so utime (14) and stime (15) are 11 and 12
    Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
}

/// Peak resident memory of `pid` in MiB (`VmHWM` of `/proc/PID/status`).
pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

/// `rss_mb` {name: peak MiB} and `rss_mb_max` over the watched processes; prints them.
pub fn rss_figures(watched: &[Watched]) -> anyhow::Result<Value> {
    let mut each = serde_json::Map::new();
    let mut max = 0.0f64;
    for w in watched {
        let mb = peak_rss_mb(w.pid).with_context(|| format!("{} (pid {})", w.name, w.pid))?;
        println!("  peak resident memory      {mb:>10.1} MiB  {}", w.name);
        each.insert(w.name.clone(), json!(mb));
        max = max.max(mb);
    }
    Ok(json!({"rss_mb": each, "rss_mb_max": max}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_process_is_name_equals_pid() {
        assert_eq!("tailer=42".parse(), Ok(Watched { name: "tailer".into(), pid: 42 }));
        assert!("tailer".parse::<Watched>().is_err());
        assert!("=42".parse::<Watched>().is_err());
        assert!("tailer=x".parse::<Watched>().is_err());
    }

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 40 3 2 1 0 0\ncpu0 50 2 25 500 20 1 1 0 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(161.0));
    }

    #[test]
    fn process_times_are_counted_after_the_command_name() {
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 70 30 0 0 20 0 4 0 100 0 0";
        assert_eq!(process_ticks(stat), Some(100.0));
    }

    #[test]
    fn this_process_has_a_peak_resident_size() -> anyhow::Result<()> {
        let mb = peak_rss_mb(std::process::id())?;
        assert!(mb > 0.0, "{mb}");
        let sample = CpuSample::take(&[Watched { name: "me".into(), pid: std::process::id() }])?;
        assert!(sample.machine > 0.0 && sample.processes.len() == 1);
        Ok(())
    }
}
