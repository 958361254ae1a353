//! # The Docker engine, through bollard, behind a blocking facade
//!
//! bollard is async; strata is not. [`Engine`] owns a small current-thread tokio runtime and
//! blocks on each call. It connects where `DOCKER_HOST` says (`unix:///path/docker.sock`,
//! `tcp://host:2375`, `http://…`; default `unix:///var/run/docker.sock`), asks `/version` and
//! negotiates the API version down to the engine's (Debian's Docker 20.10 speaks 1.41).
//!
//! Timeouts: bollard bounds the wait for a response's headers (its default is 120 s for every
//! call). Small calls here use [`QUICK`]; a load uses the caller's timeout, which must cover
//! sending the whole archive and the engine unpacking it (the engine answers only then).
//! Streamed bodies (a container's output, the load's progress) are read to their end.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder,
    DownloadFromContainerOptionsBuilder, ImportImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::signal::unix::{SignalKind, signal};

use crate::support::error::BadInput;

/// Bound on small calls (ping, version, inspect, create, start, remove).
pub const QUICK: Duration = Duration::from_secs(30);
/// Where Docker listens when `DOCKER_HOST` is unset.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// A connected engine.
pub struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    /// `DOCKER_HOST` or the default.
    pub host: String,
    /// The engine's version (`20.10.24+dfsg1`) and API version (`1.41`).
    pub version: String,
    pub api_version: String,
}

/// What to do when no engine answers.
fn no_engine(host: &str, why: &str) -> anyhow::Error {
    if why.contains("ermission denied") {
        return anyhow!(
            "the Docker engine at {host} refuses this user ({why}): run as root, or join the \
             docker group (`sudo usermod -aG docker $USER`, then log in again)"
        );
    }
    let from = if std::env::var_os("DOCKER_HOST").is_some() {
        "DOCKER_HOST"
    } else {
        "the default socket; DOCKER_HOST is unset"
    };
    anyhow!(
        "no Docker engine answers at {host} ({from}): {why}. Start one (`sudo systemctl start \
         docker`, or `sudo dockerd &`), or set DOCKER_HOST to a running engine \
         (unix:///path/to/docker.sock or tcp://HOST:2375)"
    )
}

impl Engine {
    /// Connects to the engine `DOCKER_HOST` names and negotiates the API version.
    pub fn connect() -> Result<Engine> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        let scheme_ok = ["unix://", "tcp://", "http://"]
            .iter()
            .any(|s| host.starts_with(s));
        if !scheme_ok {
            return Err(BadInput(format!(
                "DOCKER_HOST={host:?}: strata speaks to unix:///path/docker.sock, tcp://HOST:PORT \
                 or http://HOST:PORT (TLS and ssh:// are not supported)"
            ))
            .into());
        }
        if std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()) {
            return Err(BadInput(format!(
                "DOCKER_TLS_VERIFY is set for {host}: strata does not speak TLS to the engine; \
                 use its unix socket, or an SSH tunnel to it"
            ))
            .into());
        }
        if let Some(path) = host.strip_prefix("unix://")
            && !std::path::Path::new(path).exists()
        {
            return Err(no_engine(&host, &format!("{path} does not exist")));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the Docker client's runtime")?;
        let docker = Docker::connect_with_host(&host)
            .map_err(|e| no_engine(&host, &e.to_string()))?
            .with_timeout(QUICK);
        let docker = rt
            .block_on(docker.negotiate_version())
            .map_err(|e| no_engine(&host, &reason(&e)))?;
        let v = rt
            .block_on(docker.version())
            .map_err(|e| no_engine(&host, &reason(&e)))?;
        Ok(Engine {
            rt,
            docker,
            host,
            version: v.version.unwrap_or_else(|| "unknown".into()),
            api_version: v.api_version.unwrap_or_else(|| "unknown".into()),
        })
    }

    /// `Docker 20.10.24+dfsg1 (API 1.41) at unix:///…`.
    pub fn describe(&self) -> String {
        format!(
            "Docker {} (API {}) at {}",
            self.version, self.api_version, self.host
        )
    }

    /// The engine's major version (20 for 20.10.24), if it says one.
    pub fn major(&self) -> Option<u32> {
        self.version.split('.').next()?.parse().ok()
    }

    /// POSTs an archive to `/images/load`, reading the engine's progress stream to its end: an
    /// error item fails the load with the engine's message. Returns the engine's
    /// `Loaded image: …` lines.
    pub fn load<S>(&self, body: S, timeout: Duration) -> Result<Vec<String>>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let docker = self.docker.clone().with_timeout(timeout);
        let opts = ImportImageOptionsBuilder::default().quiet(false).build();
        self.rt.block_on(async move {
            let mut stream = docker.import_image_stream(opts, body, None);
            let mut loaded = Vec::new();
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| match e {
                    BollardError::RequestTimeoutError => anyhow!(
                        "the engine did not take the archive within {}s (--timeout SECS for more)",
                        timeout.as_secs()
                    ),
                    e @ (BollardError::DockerStreamError { .. }
                    | BollardError::DockerResponseServerError { .. }) => {
                        anyhow!("the engine refused the load: {}", reason(&e))
                    }
                    e => anyhow!(
                        "the connection to the engine failed during the load: {}",
                        reason(&e)
                    ),
                })?;
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(anyhow!("the engine refused the load: {e}"));
                }
                if let Some(s) = info.stream {
                    let s = s.trim();
                    if s.starts_with("Loaded image") {
                        loaded.push(s.to_string());
                    }
                }
            }
            Ok(loaded)
        })
    }

    /// The engine's image id (`sha256:…`, the config digest) of `name`, None when absent.
    pub fn image_id(&self, name: &str) -> Result<Option<String>> {
        match self.rt.block_on(self.docker.inspect_image(name)) {
            Ok(i) => Ok(i.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(anyhow!("inspecting {name} in the engine: {}", reason(&e))),
        }
    }

    /// Removes an image (by name) from the engine.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let opts = RemoveImageOptionsBuilder::default().force(true).build();
        self.rt
            .block_on(self.docker.remove_image(name, Some(opts), None))
            .map_err(|e| anyhow!("removing {name} from the engine: {}", reason(&e)))?;
        Ok(())
    }

    /// Creates a container; returns its id.
    pub fn create(&self, body: ContainerCreateBody) -> Result<String> {
        let image = body.image.clone().unwrap_or_default();
        let r = self
            .rt
            .block_on(self.docker.create_container(None, body))
            .map_err(|e| anyhow!("creating a container of {image}: {}", reason(&e)))?;
        Ok(r.id)
    }

    /// Creates a container named `name`; returns its id.
    pub fn create_named(&self, body: ContainerCreateBody, name: &str) -> Result<String> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let r = self
            .rt
            .block_on(self.docker.create_container(Some(opts), body))
            .map_err(|e| anyhow!("creating container {name}: {}", reason(&e)))?;
        Ok(r.id)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.rt
            .block_on(self.docker.start_container(id, None))
            .map_err(|e| anyhow!("starting container {}: {}", short(id), reason(&e)))
    }

    /// Removes a container, running or not (errors ignored: it may be gone already).
    pub fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let _ = self
            .rt
            .block_on(self.docker.remove_container(id, Some(opts)));
    }

    /// Attaches to a created container, starts it, copies its output to `out`/`err` until it
    /// ends, and returns its exit code.
    pub fn run_attached(&self, id: &str, out: &mut dyn Write, err: &mut dyn Write) -> Result<i64> {
        let opts = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .logs(true)
            .build();
        self.rt.block_on(async {
            let mut attached = self
                .docker
                .attach_container(id, Some(opts))
                .await
                .map_err(|e| anyhow!("attaching to container {}: {}", short(id), reason(&e)))?;
            self.docker
                .start_container(id, None)
                .await
                .map_err(|e| anyhow!("starting container {}: {}", short(id), reason(&e)))?;
            let run = async {
                while let Some(chunk) = attached.output.next().await {
                    copy_output(
                        chunk.map_err(|e| anyhow!("reading the container's output: {e}"))?,
                        out,
                        err,
                    )?;
                }
                self.wait(id).await
            };
            // Ctrl-C or a TERM: the caller still removes the container (`--rm` semantics).
            let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
            let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
            let stop = async {
                futures_util::future::select(Box::pin(int.recv()), Box::pin(term.recv())).await;
            };
            match futures_util::future::select(Box::pin(run), Box::pin(stop)).await {
                futures_util::future::Either::Left((r, _)) => r,
                futures_util::future::Either::Right(_) => {
                    Err(anyhow!("interrupted: container {} is removed", short(id)))
                }
            }
        })
    }

    /// The exit code of a container, once it ends.
    async fn wait(&self, id: &str) -> Result<i64> {
        let mut w = self.docker.wait_container(id, None);
        let mut code = None;
        while let Some(r) = w.next().await {
            match r {
                Ok(r) => code = Some(r.status_code),
                Err(BollardError::DockerContainerWaitError { code: c, .. }) => code = Some(c),
                Err(e) => {
                    return Err(anyhow!(
                        "waiting for container {}: {}",
                        short(id),
                        reason(&e)
                    ));
                }
            }
        }
        code.ok_or_else(|| anyhow!("the engine gave no exit code for container {}", short(id)))
    }

    /// Runs `cmd` in a running container as root and returns its exit code and output
    /// (stdout and stderr together).
    pub fn exec(&self, id: &str, cmd: Vec<String>) -> Result<(i64, String)> {
        self.rt.block_on(async {
            let e = self
                .docker
                .create_exec(
                    id,
                    CreateExecOptions {
                        cmd: Some(cmd),
                        // The checks need root (su to the user), whatever the image's user is.
                        user: Some("root".into()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| anyhow!("exec in container {}: {}", short(id), reason(&e)))?;
            let mut text = Vec::new();
            if let StartExecResults::Attached { mut output, .. } = self
                .docker
                .start_exec(&e.id, None)
                .await
                .map_err(|e| anyhow!("exec in container {}: {}", short(id), reason(&e)))?
            {
                while let Some(chunk) = output.next().await {
                    let chunk = chunk.map_err(|e| anyhow!("reading exec output: {e}"))?;
                    text.extend_from_slice(&chunk.into_bytes());
                }
            }
            let code = self
                .docker
                .inspect_exec(&e.id)
                .await
                .map_err(|e| anyhow!("exec in container {}: {}", short(id), reason(&e)))?
                .exit_code
                .unwrap_or(-1);
            Ok((code, String::from_utf8_lossy(&text).into_owned()))
        })
    }

    /// A directory or file of a container, as the tar the engine sends.
    pub fn download(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        self.rt.block_on(async {
            let mut s = self.docker.download_from_container(id, Some(opts));
            let mut data = Vec::new();
            while let Some(chunk) = s.next().await {
                data.extend_from_slice(
                    &chunk.map_err(|e| {
                        anyhow!("copying {path} out of the container: {}", reason(&e))
                    })?,
                );
            }
            Ok(data)
        })
    }

    /// The image's labels as the engine has them.
    pub fn labels(&self, name: &str) -> Result<HashMap<String, String>> {
        let i = self
            .rt
            .block_on(self.docker.inspect_image(name))
            .map_err(|e| anyhow!("inspecting {name} in the engine: {}", reason(&e)))?;
        Ok(i.config.and_then(|c| c.labels).unwrap_or_default())
    }
}

fn copy_output(chunk: LogOutput, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match chunk {
        LogOutput::StdErr { message } => {
            err.write_all(&message)?;
            err.flush()?;
        }
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            out.write_all(&message)?;
            out.flush()?;
        }
        LogOutput::StdIn { .. } => {}
    }
    Ok(())
}

/// The first 12 hex digits of a container id, as docker prints them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The engine's own message for a server error; bollard's text otherwise.
fn reason(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        BollardError::RequestTimeoutError => "no answer within the timeout".into(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        }
    }
}
