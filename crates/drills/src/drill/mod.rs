//! `drills <name>`: the reliability drills, each a bounded, loopback-only, repeatable
//! command that starts the services as child processes of this binary, drives traffic, breaks
//! something on purpose, prints what it did and saw, and exits 1 when a check does not hold.
//!
//! ```text
//! drills shutdown              SIGTERM to each service in turn under load
//! drills database [--pg-port P] a throwaway PostgreSQL stopped for 30 s under load
//! drills provider              the simulated provider failing, then stalling
//! drills soak [--minutes N] [--sample-seconds S] [--warmup-seconds W]
//!                                           steady load; memory, descriptors, threads over time
//! drills scale [--pg-port P]    two replicas of each service behind a balancer:
//!                                           spread, rolling restart, a replica killed, hang-ups
//! common: --keep (keep the temporary folder with the services' logs; kept anyway on failure)
//! ```
//! `docs/DRILLS.md` describes each drill, its checks and its thresholds.

mod balancer;
mod database;
mod fake_openai;
mod procfs;
mod prom;
mod provider;
mod report;
mod scale;
mod shutdown;
mod soak;
mod stack;
mod traffic;
mod verify;

use std::{process::ExitCode, time::Duration};

use report::Report;

const USAGE: &str = "usage: drills <shutdown | database [--pg-port P] | provider | soak [--minutes N] [--sample-seconds S] [--warmup-seconds W] | scale [--pg-port P]> [--keep]";

/// Options of every drill.
#[derive(Debug, Clone)]
pub struct Options {
    pub keep: bool,
    /// The throwaway PostgreSQL's port (`database`: 25432, `scale`: 25433 unless given).
    pub pg_port: Option<u16>,
    pub soak: Duration,
    pub sample: Duration,
    pub warmup: Option<Duration>,
}

impl Options {
    fn parse(args: &[&str]) -> Result<Self, String> {
        let mut o = Options {
            keep: false,
            pg_port: None,
            soak: Duration::from_secs(600),
            sample: Duration::from_secs(15),
            warmup: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| it.next().copied().ok_or_else(|| format!("{name} needs a value"));
            let number = |v: &str, name: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|n| *n > 0.0 && n.is_finite())
                    .ok_or(format!("{name}: `{v}` is not a positive number"))
            };
            match *flag {
                "--keep" => o.keep = true,
                "--pg-port" => {
                    let v = value("--pg-port")?;
                    let port: u16 = v.parse().map_err(|_| format!("--pg-port: `{v}` is not a port"))?;
                    o.pg_port = Some(port);
                    if port == 5432 || port < 1024 {
                        return Err(
                            "--pg-port: the drill never uses 5432 (the shared server) or a port below 1024".into()
                        );
                    }
                }
                "--minutes" => o.soak = Duration::from_secs_f64(number(value("--minutes")?, "--minutes")? * 60.0),
                "--sample-seconds" => {
                    o.sample = Duration::from_secs_f64(number(value("--sample-seconds")?, "--sample-seconds")?)
                }
                "--warmup-seconds" => {
                    o.warmup = Some(Duration::from_secs_f64(number(value("--warmup-seconds")?, "--warmup-seconds")?))
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(o)
    }

    /// A fresh temporary folder for the drill's database and logs.
    fn workdir(&self, name: &str) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix(&format!("vk-drill-{name}-"))
            .tempdir()
            .map_err(|e| format!("create a temporary folder: {e}"))
    }

    /// Keeps the folder (logs) when a check failed or `--keep` was given; removes it otherwise.
    fn keep_if_failed(&self, dir: tempfile::TempDir, r: &Report) {
        if self.keep || r.failed() > 0 {
            let path = dir.keep();
            r.say(format!("logs kept in {}", path.display()));
        }
    }
}

pub fn run(args: &[&str]) -> ExitCode {
    let Some((name, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let options = match Options::parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("drills: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !matches!(*name, "shutdown" | "database" | "provider" | "soak" | "scale") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    telemetry::install_crypto_provider();
    let mut report = Report::new(name);
    let outcome = runtime.block_on(async {
        let drill = async {
            match *name {
                "shutdown" => shutdown::run(&options, &mut report).await,
                "database" => database::run(&options, &mut report).await,
                "provider" => provider::run(&options, &mut report).await,
                "scale" => scale::run(&options, &mut report).await,
                _ => soak::run(&options, &mut report).await,
            }
        };
        tokio::select! {
            r = drill => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    // Children are killed when their handles drop (kill_on_drop); temporary folders go with them.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(e) = outcome {
        report.check(false, "the drill ran to its end", e);
    }
    report.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_refuse_the_shared_postgres_port_and_bad_numbers() {
        assert!(Options::parse(&["--pg-port", "5432"]).is_err());
        assert!(Options::parse(&["--minutes", "0"]).is_err());
        assert!(Options::parse(&["--minutes"]).is_err());
        assert!(Options::parse(&["--bogus"]).is_err());
        let o = Options::parse(&["--minutes", "1.5", "--pg-port", "55999", "--keep"]).unwrap();
        assert_eq!(o.soak, Duration::from_secs(90));
        assert_eq!(o.pg_port, Some(55999));
        assert!(o.keep);
        assert_eq!(Options::parse(&[]).unwrap().soak, Duration::from_secs(600));
    }
}
