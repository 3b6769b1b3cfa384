//! The shared `main` of every service binary: read configuration (every bad variable reported on
//! its own line, exit code 2), build the runtime with `WORKERS` threads, start telemetry, run
//! the service until shutdown, flush telemetry.

use std::{future::Future, process::ExitCode};

use crate::{ConfigErrors, Env, ServiceContext, ServiceInfo, TelemetryConfig};

/// Exit code for bad configuration.
pub const EXIT_CONFIG: u8 = 2;

/// Runs a service binary. `read` parses the service's configuration from the environment;
/// `telemetry_of` picks its common part; `run` serves until shutdown.
pub fn run_service<C, F, Fut, E>(
    info: ServiceInfo,
    read: impl FnOnce(&Env) -> Result<C, ConfigErrors>,
    telemetry_of: impl Fn(&C) -> &TelemetryConfig,
    run: F,
) -> ExitCode
where
    F: FnOnce(C, ServiceContext) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    run_service_configured(info, read, |info, _| info, telemetry_of, run)
}

/// [`run_service`] where the configuration adjusts the service's identity before telemetry
/// starts (`configure`), e.g. a histogram bucket that a variable sets.
pub fn run_service_configured<C, F, Fut, E>(
    info: ServiceInfo,
    read: impl FnOnce(&Env) -> Result<C, ConfigErrors>,
    configure: impl FnOnce(ServiceInfo, &C) -> ServiceInfo,
    telemetry_of: impl Fn(&C) -> &TelemetryConfig,
    run: F,
) -> ExitCode
where
    F: FnOnce(C, ServiceContext) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let env = Env::from_process();
    let config = match read(&env) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", info.name);
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let info = configure(info, &config);
    let tc = telemetry_of(&config).clone();
    crate::memory::start_trimmer();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(tc.workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: start the async runtime: {e}", info.name);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = match crate::init(&info, &tc) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: {e}", info.name);
                return ExitCode::FAILURE;
            }
        };
        let ctx = ServiceContext::from_telemetry(&telemetry);
        let result = run(config, ctx).await;
        let code = match result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                // `{:#}`: an error with causes (anyhow) prints them all, so a failed bind says why.
                tracing::error!(error = format!("{e:#}"), "service failed");
                eprintln!("{}: {e:#}", info.name);
                ExitCode::FAILURE
            }
        };
        telemetry.shutdown().await;
        code
    })
}
