//! The `portcullis` command: `serve`, `stdio`, `check`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config::Config;
use portcullis::registry::Endpoint;
use portcullis::runtime::Runtime;
use portcullis::{server, telemetry};
use rmcp::ServiceExt;

/// An MCP gateway: one endpoint for many MCP servers.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over HTTP.
    Serve {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve one MCP session over stdin/stdout.
    Stdio {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            let config = Config::load(&config)?;
            println!(
                "{}: ok ({} upstreams, {} virtual servers)",
                config.source.display(),
                config.upstreams.len(),
                config.virtual_servers.len()
            );
            Ok(())
        }
        Command::Serve { config } => runtime()?.block_on(serve(Config::load(&config)?)),
        Command::Stdio { config } => runtime()?.block_on(stdio(Config::load(&config)?)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.log);
    let listener = server::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let runtime = Runtime::start(config);
    let router = Arc::new(server::Router::new(&runtime));
    // Tests and scripts read this line to learn an OS-chosen port.
    println!("portcullis listening on http://{addr}");
    tracing::info!(%addr, "listening");
    let shutdown = runtime.shutdown_token();
    let serving = tokio::spawn(server::serve(listener, router, shutdown.clone()));
    wait_for_signal().await;
    tracing::info!("shutting down");
    runtime.stop().await;
    let _ = serving.await;
    Ok(())
}

async fn stdio(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.log);
    let runtime = Runtime::start(config);
    let session = runtime.gateway.session(Endpoint::Aggregate);
    let running = session
        .serve(rmcp::transport::stdio())
        .await
        .context("MCP handshake on stdio")?;
    tokio::select! {
        _ = running.waiting() => {}
        () = wait_for_signal() => {}
    }
    runtime.stop().await;
    Ok(())
}

async fn wait_for_signal() {
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
    let _ = ctrl_c.await;
}
