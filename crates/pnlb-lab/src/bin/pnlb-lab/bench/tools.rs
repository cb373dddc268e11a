//! Running wrk and iperf3 from the lab's client and reading their output.

use serde::Serialize;

/// One wrk run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HttpRun {
    pub requests_per_sec: f64,
    pub latency_mean_us: f64,
    pub latency_stdev_us: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// Socket errors and non-2xx/3xx responses.
    pub errors: u64,
    /// Busy CPU time of the whole machine (both cores: client, router, LB,
    /// servers) per request, from /proc/stat.
    pub machine_us_per_request: f64,
    /// pnlb built with `run-times`: its program's run time per packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramRunTimes>,
}

/// The XDP program's own run time per packet over one run (bucket upper
/// bounds: "at most"), from pnlb's `run-times` build.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProgramRunTimes {
    pub packets: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Packets that took 8 us or more.
    pub from_8us: u64,
}

impl ProgramRunTimes {
    pub fn of(times: &pnlb_dataplane::run_times::RunTimes) -> Self {
        let quantile = |q| times.quantile_ns(q).unwrap_or(0);
        Self {
            packets: times.packets(),
            p50_ns: quantile(0.5),
            p99_ns: quantile(0.99),
            p999_ns: quantile(0.999),
            max_ns: quantile(1.0),
            from_8us: times.at_least(8_192),
        }
    }
}

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// A wrk latency like "123.45us", "1.23ms", "2.00s" in microseconds.
fn micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        "m" => value * 60e6,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(output: &str) -> Option<HttpRun> {
    let mut run = HttpRun::default();
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Latency", avg, stdev, ..] => {
                run.latency_mean_us = micros(avg)?;
                run.latency_stdev_us = micros(stdev)?;
            }
            ["50%", value] => run.latency_p50_us = micros(value)?,
            ["99%", value] => run.latency_p99_us = micros(value)?,
            ["Requests/sec:", value] => run.requests_per_sec = value.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (run.requests_per_sec > 0.0).then_some(run)
}

/// Received throughput from `iperf3 -J` output, in Gbit/s.
pub fn parse_iperf3(json: &str) -> Option<f64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let bits = value
        .pointer("/end/sum_received/bits_per_second")?
        .as_f64()?;
    Some(bits / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://10.77.100.1/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   123.45us   45.67us   1.23ms   89.00%
    Req/Sec     7.89k   123.45     8.00k    70.00%
  Latency Distribution
     50%  120.00us
     75%  130.00us
     90%  150.00us
     99%    1.50ms
  23456 requests in 3.00s, 3.45MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:   7818.67
Transfer/sec:      1.15MB
";

    #[test]
    fn wrk_output_is_read_with_units() {
        let run = parse_wrk(WRK).unwrap();
        assert_eq!(run.requests_per_sec, 7818.67);
        assert_eq!((run.latency_mean_us, run.latency_stdev_us), (123.45, 45.67));
        assert_eq!((run.latency_p50_us, run.latency_p99_us), (120.0, 1500.0));
        assert_eq!(run.errors, 3);
        assert!(parse_wrk("garbage").is_none());
    }

    #[test]
    fn iperf3_json_gives_gigabits() {
        let json = r#"{"end": {"sum_received": {"bits_per_second": 2500000000.0}}}"#;
        assert_eq!(parse_iperf3(json), Some(2.5));
        assert_eq!(parse_iperf3("{}"), None);
    }
}
