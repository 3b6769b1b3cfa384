//! Runs the three services as child processes of this binary (`voice-kraliki serve <name>`), so
//! each keeps its own ports, metrics registry and `service.name`; restarts one that crashes,
//! stops all on SIGTERM/SIGINT, and gives call-api a development API key when none is set.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use tokio::process::{Child, Command};

const SERVICES: [&str; 3] = ["audio-processor", "provider-gateway", "call-api"];
/// Exit code services use for bad configuration: restarting would not help.
const EXIT_CONFIG: i32 = 2;
const MAX_RESTARTS: u32 = 5;

pub fn run() -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("voice-kraliki: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(supervise())
}

fn dev_api_key() -> Option<String> {
    if std::env::var("API_KEYS").is_ok_and(|v| !v.trim().is_empty()) {
        return None;
    }
    let key = format!("vk_dev_{}", hex::encode(rand::random::<[u8; 16]>()));
    Some(key)
}

fn spawn(name: &str, api_key: Option<&str>) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["serve", name]).kill_on_drop(true);
    if let (Some(key), "call-api") = (api_key, name) {
        cmd.env("API_KEYS", key);
    }
    cmd.spawn()
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGTERM);
    }
}

async fn supervise() -> ExitCode {
    let api_key = dev_api_key();
    if let Some(key) = &api_key {
        let _ = std::fs::write(voice_kraliki::DEV_API_KEY_FILE, format!("{key}\n"));
        eprintln!("voice-kraliki: API_KEYS is not set; development API key for this run (also in .dev-api-key):");
        eprintln!(
            "\n    export VK_API_KEY={key}\n    curl -H \"Authorization: Bearer $VK_API_KEY\" http://127.0.0.1:8000/v1/providers\n"
        );
    }
    let mut children: Vec<(String, Child, u32, Instant)> = Vec::new();
    for name in SERVICES {
        match spawn(name, api_key.as_deref()) {
            Ok(child) => children.push((name.to_string(), child, 0, Instant::now())),
            Err(e) => {
                eprintln!("voice-kraliki: start {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("voice-kraliki: listen for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut code = ExitCode::SUCCESS;
    'watch: loop {
        tokio::select! {
            _ = term.recv() => break 'watch,
            _ = tokio::signal::ctrl_c() => break 'watch,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for (name, child, restarts, started) in children.iter_mut() {
            let Ok(Some(status)) = child.try_wait() else { continue };
            if status.code() == Some(EXIT_CONFIG) {
                eprintln!("voice-kraliki: {name} rejected its configuration; stopping");
                code = ExitCode::from(2);
                break 'watch;
            }
            // A service that ran for a while earns its restart budget back.
            if started.elapsed() > Duration::from_secs(60) {
                *restarts = 0;
            }
            if *restarts >= MAX_RESTARTS {
                eprintln!("voice-kraliki: {name} keeps failing ({status}); stopping");
                code = ExitCode::FAILURE;
                break 'watch;
            }
            *restarts += 1;
            let backoff = Duration::from_millis(250 * 2u64.pow(*restarts));
            eprintln!("voice-kraliki: {name} exited ({status}); restarting in {backoff:?}");
            tokio::time::sleep(backoff).await;
            match spawn(name, api_key.as_deref()) {
                Ok(c) => {
                    *child = c;
                    *started = Instant::now();
                }
                Err(e) => {
                    eprintln!("voice-kraliki: restart {name}: {e}");
                    code = ExitCode::FAILURE;
                    break 'watch;
                }
            }
        }
    }
    // call-api first, so it stops taking requests before its peers go away.
    for (_, child, _, _) in children.iter().rev() {
        terminate(child);
    }
    for (name, child, _, _) in children.iter_mut().rev() {
        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(Ok(status)) if !status.success() && status.code() != Some(EXIT_CONFIG) => {
                eprintln!("voice-kraliki: {name} exited with {status}");
            }
            Ok(_) => {}
            Err(_) => {
                eprintln!("voice-kraliki: {name} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
    code
}
