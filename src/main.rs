//! The `portcullis` command: `serve`, `stdio`, `check`, `policy test`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config::Config;
use portcullis::registry::Endpoint;
use portcullis::runtime::Runtime;
use portcullis::telemetry::Metrics;
use portcullis::{server, telemetry};
use rmcp::ServiceExt;

// Opt-in: it trades idle-session memory for CPU per call (see Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Validate a config file (and its policies and pin lock file) and exit.
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Connect to the upstreams and write the pin lock file
    /// (`policies.pinning.lockfile`) with each tool's definition hash,
    /// approving the definitions as they are now.
    Pin {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Pin only these upstreams (default: all); other pins are kept.
        #[arg(long)]
        upstream: Vec<String>,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run table-driven policy test files; exits 1 if any case fails.
    Test {
        /// Test files (see docs/policy.md for the format).
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
            let mut rules = String::new();
            if let Some(p) = &config.policies {
                let dir = config.resolve_path(&p.dir);
                let set = portcullis::policy::PolicySet::load_dir(&dir, p.default)?;
                rules = format!(
                    ", {} policy rules, {} guards",
                    set.rule_count(),
                    set.guard_count()
                );
                if let Some(lock) = &p.pinning.lockfile {
                    let lock = portcullis::policy::pin::Lockfile::load(&config.resolve_path(lock))?;
                    rules.push_str(&format!(", {} pinned tools", lock.tools.len()));
                }
            }
            if !config.models.is_empty() {
                rules.push_str(&format!(
                    ", {} model aliases over {} providers",
                    config.models.len(),
                    config.providers.len()
                ));
            }
            println!(
                "{}: ok ({} upstreams, {} virtual servers{rules})",
                config.source.display(),
                config.upstreams.len(),
                config.virtual_servers.len()
            );
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Test { files },
        } => policy_test(&files),
        Command::Pin { config, upstream } => {
            let config = Config::load(&config)?;
            runtime(&config)?.block_on(pin(config, upstream))
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            runtime(&config)?.block_on(serve(config))
        }
        Command::Stdio { config } => {
            let config = Config::load(&config)?;
            let rt = runtime(&config)?;
            let result = rt.block_on(stdio(config));
            // Reading stdin occupies a blocking thread until a line or EOF
            // arrives; a signal must not wait for the client's next line.
            rt.shutdown_timeout(std::time::Duration::from_millis(250));
            result
        }
    }
}

fn policy_test(files: &[PathBuf]) -> anyhow::Result<()> {
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let report = portcullis::policy::testrun::run_file(file)?;
        println!("{}", file.display());
        for case in &report.cases {
            match &case.failure {
                None => println!("  ok    {}", case.name),
                Some(why) => println!("  FAIL  {}: {why}", case.name),
            }
        }
        passed += report.passed;
        failed += report.failed.len();
    }
    println!("policy tests: {passed} passed, {failed} failed");
    if failed > 0 {
        anyhow::bail!("{failed} policy test case(s) failed");
    }
    Ok(())
}

fn runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.runtime.worker_threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn pin(mut config: Config, only: Vec<String>) -> anyhow::Result<()> {
    use portcullis::policy::pin::{definition_hash, Lockfile};
    let Some(path) = config
        .policies
        .as_ref()
        .and_then(|p| p.pinning.lockfile.clone())
    else {
        anyhow::bail!(
            "{}: field `policies.pinning.lockfile`: set it to say where pins are written",
            config.source.display()
        );
    };
    let path = config.resolve_path(&path);
    for name in &only {
        anyhow::ensure!(
            config.upstreams.contains_key(name),
            "no upstream named `{name}`"
        );
    }
    // Pins are being (re)written: start without enforcing the old ones.
    if let Some(p) = config.policies.as_mut() {
        p.pinning.lockfile = None;
    }
    let telemetry = telemetry::init(&config.log, &config.telemetry)?;
    let runtime = Runtime::start(config, Arc::new(Metrics::new()?), false)?;
    let registry = runtime.gateway.registry().clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !registry.upstreams().values().all(|u| u.tried()) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "upstreams did not start within 120s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut lock = if path.exists() {
        Lockfile::load(&path)?
    } else {
        Lockfile {
            version: portcullis::policy::pin::LOCKFILE_VERSION,
            ..Lockfile::default()
        }
    };
    let mut failed = Vec::new();
    for (name, up) in registry.upstreams() {
        if !only.is_empty() && !only.iter().any(|o| **o == **name) {
            continue;
        }
        if !up.is_up() {
            failed.push(name.to_string());
            continue;
        }
        let prefix = format!("{name}/");
        let before = lock.tools.clone();
        lock.tools.retain(|k, _| !k.starts_with(&prefix));
        let tools = registry.upstream_tools(name).await;
        let (mut added, mut changed) = (0, 0);
        for tool in tools.iter() {
            let key = Lockfile::key(name, &tool.name);
            let hash = definition_hash(tool);
            match before.get(&key) {
                None => added += 1,
                Some(old) if *old != hash => changed += 1,
                Some(_) => {}
            }
            lock.tools.insert(key, hash);
        }
        let removed = before
            .keys()
            .filter(|k| k.starts_with(&prefix) && !lock.tools.contains_key(*k))
            .count();
        println!(
            "{name}: {} tools pinned ({added} new, {changed} changed, {removed} removed)",
            tools.len()
        );
    }
    lock.save(&path)?;
    println!("wrote {}", path.display());
    runtime.stop().await;
    telemetry.shutdown();
    anyhow::ensure!(
        failed.is_empty(),
        "not pinned (upstream down): {}",
        failed.join(", ")
    );
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config.log, &config.telemetry)?;
    let listener = server::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin_listener = match config.telemetry.admin_listen {
        Some(a) => Some(
            server::bind(a)
                .await
                .with_context(|| format!("binding admin listener {a}"))?,
        ),
        None => None,
    };
    let runtime = Runtime::start(config, Arc::new(Metrics::new()?), false)?;
    let router = Arc::new(server::Router::new(&runtime, admin_listener.is_none()));
    // Tests and scripts read these lines to learn OS-chosen ports.
    println!("portcullis listening on http://{addr}");
    let shutdown = runtime.shutdown_token();
    let mut serving = vec![tokio::spawn(server::serve(
        listener,
        router,
        shutdown.clone(),
    ))];
    if let Some(admin) = admin_listener {
        println!(
            "portcullis admin listening on http://{}",
            admin.local_addr()?
        );
        let router = Arc::new(server::Router::admin_only(&runtime));
        serving.push(tokio::spawn(server::serve(admin, router, shutdown.clone())));
    }
    tracing::info!(%addr, "listening");
    wait_for_signal().await;
    tracing::info!("shutting down");
    runtime.stop().await;
    for task in serving {
        let _ = task.await;
    }
    telemetry.shutdown();
    Ok(())
}

async fn stdio(config: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config.log, &config.telemetry)?;
    let runtime = Runtime::start(config, Arc::new(Metrics::new()?), true)?;
    let session = runtime.gateway.session(Endpoint::Aggregate);
    let running = session
        .serve(portcullis::server::stdio(&runtime.gateway))
        .await
        .context("MCP handshake on stdio")?;
    tokio::select! {
        _ = running.waiting() => {}
        () = wait_for_signal() => {}
    }
    runtime.stop().await;
    telemetry.shutdown();
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
