//! What a drill prints: lines of what it did and saw as they happen, then one PASS/FAIL line per
//! check and a verdict.

use std::{process::ExitCode, time::Instant};

pub struct Check {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

pub struct Report {
    name: String,
    started: Instant,
    checks: Vec<Check>,
}

impl Report {
    pub fn new(name: &str) -> Self {
        println!("== drill {name} ==");
        Self { name: name.to_string(), started: Instant::now(), checks: Vec::new() }
    }

    /// Prints a line of what the drill is doing or saw, stamped with the drill's clock.
    pub fn say(&self, line: impl AsRef<str>) {
        println!("[{:>6.1}s] {}", self.started.elapsed().as_secs_f64(), line.as_ref());
    }

    /// Prints a line without the clock (tables).
    pub fn raw(&self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
    }

    /// Records and prints one check; returns whether it held.
    pub fn check(&mut self, ok: bool, what: impl Into<String>, detail: impl Into<String>) -> bool {
        let check = Check { ok, what: what.into(), detail: detail.into() };
        println!(
            "[{:>6.1}s] {} {} — {}",
            self.started.elapsed().as_secs_f64(),
            if ok { "PASS" } else { "FAIL" },
            check.what,
            check.detail
        );
        self.checks.push(check);
        ok
    }

    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.ok).count()
    }

    /// Prints the verdict; exit status 1 when a check failed (or none ran).
    pub fn finish(self) -> ExitCode {
        let failed = self.failed();
        println!(
            "== drill {}: {} checks, {} passed, {} failed, {:.1} s ==",
            self.name,
            self.checks.len(),
            self.checks.len() - failed,
            failed,
            self.started.elapsed().as_secs_f64()
        );
        for c in self.checks.iter().filter(|c| !c.ok) {
            println!("   FAILED: {} — {}", c.what, c.detail);
        }
        if failed == 0 && !self.checks.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}
