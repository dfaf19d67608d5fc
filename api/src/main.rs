//! `ebb`: the control plane (`ebb server`) and its command-line client.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ebb_api::cli::{Cli, Command, LogFormat, ServerArgs, run_client};
use ebb_api::config::{Config, TlsConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Server(args) => match runtime.block_on(server(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        command => match runtime.block_on(run_client(command)) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                e.print();
                ExitCode::FAILURE
            }
        },
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EBB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(a) = args.listen {
        config.listen = a;
    }
    if let Some(a) = args.http_listen {
        config.http_listen = a;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(b) = args.store {
        config.store.backend = b;
    }
    if let Some(e) = args.etcd_endpoints {
        config.store.etcd_endpoints = e;
    }
    if let Some(p) = args.etcd_prefix {
        config.store.etcd_prefix = p;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsConfig { cert, key });
    }
    let mut running = ebb_api::server::start(config).await?;
    let trigger = running.take_trigger().context("shutdown trigger")?;
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received");
        let _ = trigger.send(());
    });
    running.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
