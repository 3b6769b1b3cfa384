//! The binary itself: a bad provider variable stops it at start with one line naming the
//! variable and exit code 2.

use std::process::Command;

#[test]
fn a_bad_provider_variable_stops_the_binary_with_exit_2() {
    let dir = std::env::temp_dir().join(format!("pgw-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_provider-gateway"))
        .current_dir(&dir)
        .env("STT_PROVIDERS", "deepgram,acme")
        .env("PROVIDER_GATEWAY_GRPC_ADDR", "127.0.0.1:0")
        .env("PROVIDER_GATEWAY_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("STT_PROVIDERS") && lines[0].contains("acme"), "{stderr}");
}
