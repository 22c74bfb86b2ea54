//! The stdio transport: a child process we spawn ourselves, so that its
//! stdout can be read through a [`Tap`] before rmcp parses it (rmcp's
//! `TokioChildProcess` owns the pipes). Shutdown is rmcp's: close stdin,
//! wait, `SIGTERM`, wait, kill; dropping the transport kills the child's
//! whole process group.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::Transport;
use tokio::io::AsyncBufReadExt;
use tokio::process::{ChildStdin, ChildStdout};

use super::task_support::{Tap, TaskSupport};
use crate::config::StdioConfig;

/// How long the child gets to exit after each step of shutdown.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// A running stdio server and the transport over its pipes. The child
/// lives exactly as long as the transport.
pub(crate) struct ChildTransport {
    child: Option<Box<dyn ChildWrapper>>,
    io: AsyncRwTransport<RoleClient, Tap<ChildStdout>, ChildStdin>,
}

impl ChildTransport {
    /// Starts the child in its own process group, so that stopping it also
    /// stops whatever it started (`npx` runs the real server as a
    /// grandchild), and logs its stderr under the upstream's name: our own
    /// stdout and stderr stay ours, which matters when the gateway itself
    /// speaks MCP on stdio.
    pub(crate) fn spawn(
        name: &str,
        stdio: &StdioConfig,
        seen: Arc<TaskSupport>,
    ) -> std::io::Result<ChildTransport> {
        let mut command = tokio::process::Command::new(&stdio.command);
        command
            .args(&stdio.args)
            .envs(&stdio.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &stdio.cwd {
            command.current_dir(cwd);
        }
        let mut wrapped = CommandWrap::from(command);
        wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
        let mut child = wrapped.spawn()?;
        let pipes = (
            child.inner_mut().stdout().take(),
            child.inner_mut().stdin().take(),
        );
        let (Some(stdout), Some(stdin)) = pipes else {
            return Err(std::io::Error::other("the child's pipes were not opened"));
        };
        if let Some(stderr) = child.inner_mut().stderr().take() {
            let upstream: Arc<str> = name.into();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "portcullis::upstream::stderr", upstream = %upstream, "{line}");
                }
            });
        }
        Ok(ChildTransport {
            child: Some(child),
            io: AsyncRwTransport::new(Tap::new(stdout, seen), stdin),
        })
    }

    /// The MCP stdio shutdown sequence. The child stays in `self.child`
    /// until it has exited, so a cancelled shutdown still kills it on drop.
    async fn shutdown(&mut self) -> std::io::Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        self.io.close().await?;
        if exited(child).await? {
            self.child = None;
            return Ok(());
        }
        match child.signal(libc::SIGTERM) {
            Ok(()) => {
                if exited(child).await? {
                    self.child = None;
                    return Ok(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot send SIGTERM to a stdio upstream"),
        }
        Box::into_pin(child.kill()).await?;
        self.child = None;
        Ok(())
    }
}

/// Whether the child exited within [`EXIT_WAIT`].
async fn exited(child: &mut Box<dyn ChildWrapper>) -> std::io::Result<bool> {
    match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
        Ok(status) => status.map(|_| true),
        Err(_) => Ok(false),
    }
}

impl Drop for ChildTransport {
    fn drop(&mut self) {
        // `kill` (not `start_kill`) also reaps, so no zombie is left.
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Without a runtime, KillOnDrop still kills it as it drops.
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = Box::into_pin(child.kill()).await {
                tracing::warn!(error = %e, "killing a stdio upstream failed");
            }
        });
    }
}

impl Transport<RoleClient> for ChildTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.io.send(item)
    }

    fn receive(
        &mut self,
    ) -> impl std::future::Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.io.receive()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.shutdown().await
    }
}
