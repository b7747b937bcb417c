//! Running as a Windows service (the `windows-service` crate): `install`, `uninstall`,
//! `start`, `stop`, and the service entry point, which turns the service manager's Stop
//! and Shutdown controls into the agent's cancellation token and logs to a file.
//! `install` and `uninstall` also register and remove the event source; the entry point
//! writes the start, the clean stop and a failure's reason to the event log
//! ([`crate::event_log`]) and reports the exit code (78 or 1) to the service manager.
//!
//! The service runs `tcpulse-agent.exe service --config <FILE>` as LocalSystem, starts
//! automatically at boot, and logs to `C:\ProgramData\tcpulse-agent\agent.log` unless the
//! config names another log file. Secrets come from the config's files or from
//! machine-level environment variables, never from the service command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use crate::cli::CliError;
use crate::config::RunArgs;
use crate::event_log::{self, Entry};

/// Name of the service.
pub const SERVICE_NAME: &str = "tcpulse-agent";
/// Display name of the service.
pub const DISPLAY_NAME: &str = "tcpulse agent (Teams Connector telemetry)";
/// Default log file of the service.
pub const DEFAULT_LOG_FILE: &str = r"C:\ProgramData\tcpulse-agent\agent.log";

static RUN_ARGS: OnceLock<RunArgs> = OnceLock::new();

fn svc_err(step: &str) -> impl FnOnce(windows_service::Error) -> CliError + '_ {
    move |e| CliError::Setup(format!("service {step} failed: {e}; run as Administrator"))
}

/// Installs the service with `config` (made absolute).
pub fn install(config: &Path) -> Result<(), CliError> {
    let config = std::path::absolute(config)
        .map_err(|e| CliError::Setup(format!("config path {}: {e}", config.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Setup(format!("cannot find own executable: {e}")))?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(svc_err("manager"))?;
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: vec![
            OsString::from("service"),
            OsString::from("--config"),
            config.into_os_string(),
        ],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .map_err(svc_err("install"))?;
    service
        .set_description("Publishes Teams Connector call counts and health to Azure Event Hubs")
        .map_err(svc_err("describe"))?;
    event_log::register().map_err(|e| {
        CliError::Setup(format!(
            "registering the event source {}: {e}; run as Administrator",
            event_log::SOURCE
        ))
    })?;
    println!("installed service {SERVICE_NAME}; start it with `tcpulse-agent start`");
    Ok(())
}

fn open(access: ServiceAccess) -> Result<windows_service::service::Service, CliError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(svc_err("manager"))?;
    manager
        .open_service(SERVICE_NAME, access)
        .map_err(svc_err("open"))
}

/// Removes the service (stopping it first if it runs).
pub fn uninstall() -> Result<(), CliError> {
    let service = open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)?;
    if service
        .query_status()
        .map_err(svc_err("query"))?
        .current_state
        != ServiceState::Stopped
    {
        drop(service.stop());
    }
    service.delete().map_err(svc_err("delete"))?;
    if let Err(e) = event_log::deregister() {
        eprintln!("tcpulse-agent: could not remove the event source: {e}");
    }
    println!("removed service {SERVICE_NAME}");
    Ok(())
}

/// Starts the service.
pub fn start() -> Result<(), CliError> {
    open(ServiceAccess::START)?
        .start::<&str>(&[])
        .map_err(svc_err("start"))
}

/// Stops the service.
pub fn stop() -> Result<(), CliError> {
    open(ServiceAccess::STOP)?
        .stop()
        .map(drop)
        .map_err(svc_err("stop"))
}

windows_service::define_windows_service!(ffi_service_main, service_main);

/// Entry point when the service manager starts the process (`tcpulse-agent service`).
pub fn run_service(args: RunArgs) -> Result<(), CliError> {
    let _ = RUN_ARGS.set(args);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(svc_err("dispatch"))
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = run_under_scm() {
        tracing::error!("service failed: {e:#}");
    }
}

fn run_under_scm() -> Result<(), CliError> {
    let token = CancellationToken::new();
    let stop = token.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status =
        service_control_handler::register(SERVICE_NAME, handler).map_err(svc_err("register"))?;
    let set = |state, accept, exit_code| {
        status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code,
            checkpoint: 0,
            wait_hint: Duration::from_secs(10),
            process_id: None,
        })
    };
    set(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        ServiceExitCode::Win32(0),
    )
    .map_err(svc_err("status"))?;
    let args = RUN_ARGS.get().cloned().unwrap_or_default();
    event_log::write(&Entry::Started {
        config: args.config.as_deref(),
    });
    let log = PathBuf::from(DEFAULT_LOG_FILE);
    if let Some(dir) = log.parent() {
        drop(std::fs::create_dir_all(dir));
    }
    let exit_code = match crate::cli::run_agent(&args, token, Some(log.clone())) {
        Ok(()) => {
            event_log::write(&Entry::Stopped);
            ServiceExitCode::Win32(0)
        }
        Err(e) => {
            let failure = e.failure();
            let reason = crate::internal_events::error_chain(&e);
            event_log::write(&Entry::Failed {
                failure,
                reason: &reason,
            });
            // A config error happens before logging is set up: log it to the default file.
            drop(crate::cli::init_tracing("info", Some(&log)));
            tracing::error!("tcpulse-agent: {reason}");
            ServiceExitCode::ServiceSpecific(u32::from(failure.code()))
        }
    };
    set(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        exit_code,
    )
    .map_err(svc_err("status"))
}
