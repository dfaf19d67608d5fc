//! The Docker Engine implementation of `Runtime`, through bollard.
//!
//! It connects with bollard's local defaults (`DOCKER_HOST` or the Unix
//! socket) and negotiates the API version down to what the engine speaks
//! (engine 20.10 speaks API 1.41), so only endpoints and fields of that
//! version are used.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    HostConfigLogConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::{
    ContainerConfig, ContainerInfo, ContainerState, LABEL_EXECUTOR, LogTail, Runtime, RuntimeError,
    SCRATCH_MOUNT, StopOutcome,
};

/// Nano-CPUs per CPU millicore: Docker counts CPUs in units of 10⁻⁹.
const NANO_CPUS_PER_MILLI: i64 = 1_000_000;
/// Bytes per MiB.
const BYTES_PER_MIB: i64 = 1024 * 1024;
/// How long to wait for a container to die after SIGKILL before calling the
/// stop failed. SIGKILL cannot be caught; only an engine in trouble (a hung
/// filesystem, a D-state process) takes longer than this.
const SIGKILL_WAIT: Duration = Duration::from_secs(30);

/// Docker Engine through bollard.
#[derive(Clone, Debug)]
pub struct DockerRuntime {
    docker: Docker,
    pull_timeout: Duration,
}

impl DockerRuntime {
    /// Connects with the local defaults, negotiates the API version and
    /// checks the engine answers. `pull_timeout` bounds an image pull.
    pub async fn connect(pull_timeout: Duration) -> Result<Self, RuntimeError> {
        let unreachable = |err: BollardError| RuntimeError::Unreachable {
            message: format!(
                "{err} (is dockerd running, and may this user use the socket? DOCKER_HOST={})",
                std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unset".into())
            ),
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Self {
            docker,
            pull_timeout,
        })
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// The bollard client, for callers that need an endpoint the trait does
    /// not cover (the tests inspect limits through it).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn pull(&self, image: &str) -> Result<(), String> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            item.map_err(|err| err.to_string())?;
        }
        Ok(())
    }
}

/// The engine's HTTP status for an error, if it answered with one.
fn status(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Maps a bollard error, turning 404 into `NotFound` and transport trouble
/// into `Unreachable`.
fn engine_error(operation: &'static str, container: &str, err: BollardError) -> RuntimeError {
    match &err {
        _ if status(&err) == Some(404) => RuntimeError::NotFound {
            container: container.to_owned(),
        },
        BollardError::DockerResponseServerError { message, .. } => RuntimeError::Engine {
            operation,
            container: container.to_owned(),
            message: message.clone(),
        },
        BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_) => RuntimeError::Unreachable {
            message: format!("{operation} `{container}`: {err}"),
        },
        _ => RuntimeError::Engine {
            operation,
            container: container.to_owned(),
            message: err.to_string(),
        },
    }
}

/// Parses Docker's RFC 3339 timestamps; the zero time Docker uses for
/// "never" (`0001-01-01T00:00:00Z`) comes back as `None`.
fn parse_time(text: Option<&str>) -> Option<SystemTime> {
    humantime::parse_rfc3339(text?).ok()
}

fn container_info(container: &str, inspect: ContainerInspectResponse) -> ContainerInfo {
    let state = inspect.state.unwrap_or_default();
    let labels: BTreeMap<String, String> = inspect
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let lifecycle = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING
            | ContainerStateStatusEnum::STOPPING,
        ) => ContainerState::Running,
        Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited {
            exit_code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        },
        _ => ContainerState::Gone,
    };
    ContainerInfo {
        id: inspect.id.unwrap_or_else(|| container.to_owned()),
        name: inspect
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        labels,
        state: lifecycle,
        started_at: parse_time(state.started_at.as_deref()),
        finished_at: parse_time(state.finished_at.as_deref()),
    }
}

impl DockerRuntime {
    async fn kill(&self, container: &str, signal: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        match self.docker.kill_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            // 409: "container … is not running": it already exited, which is
            // what the signal was for.
            Err(err) if status(&err) == Some(409) => Ok(()),
            Err(err) => Err(engine_error("kill", container, err)),
        }
    }
}

impl Runtime for DockerRuntime {
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(err) if status(&err) == Some(404) => {}
            Err(err) => return Err(engine_error("inspect image", image, err)),
        }
        tracing::info!(image, "image not present, trying to pull it");
        let reason = match tokio::time::timeout(self.pull_timeout, self.pull(image)).await {
            Ok(Ok(())) => match self.docker.inspect_image(image).await {
                Ok(_) => return Ok(()),
                Err(err) => format!("pull finished but the image is still absent: {err}"),
            },
            Ok(Err(message)) => format!("pull failed: {message}"),
            Err(_) => format!(
                "pull did not finish within {} ms",
                self.pull_timeout.as_millis()
            ),
        };
        Err(RuntimeError::ImageNotAvailable {
            image: image.to_owned(),
            reason,
        })
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        let host_config = HostConfig {
            nano_cpus: Some(
                i64::try_from(config.cpu_millis)
                    .unwrap_or(i64::MAX / NANO_CPUS_PER_MILLI)
                    .saturating_mul(NANO_CPUS_PER_MILLI),
            ),
            memory: Some(
                i64::try_from(config.memory_mib)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(BYTES_PER_MIB),
            ),
            // Memory + swap equal to memory: the container gets no swap, so
            // exceeding the limit is an OOM kill, not a slow thrash.
            memory_swap: Some(
                i64::try_from(config.memory_mib)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(BYTES_PER_MIB),
            ),
            pids_limit: Some(i64::from(config.pids_limit)),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(
                config
                    .cap_add
                    .iter()
                    .map(|cap| cap.name().to_owned())
                    .collect(),
            ),
            readonly_rootfs: Some(config.read_only_rootfs),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            mounts: Some(vec![Mount {
                target: Some(SCRATCH_MOUNT.to_owned()),
                source: Some(config.scratch_dir.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            }]),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), config.log_max_bytes.to_string()),
                    // One file: the size cap is the whole on-disk log.
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(config.image.clone()),
            cmd: (!config.command.is_empty()).then(|| config.command.clone()),
            env: Some(
                config
                    .env
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect(),
            ),
            labels: Some(config.labels.clone().into_iter().collect()),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&config.name)
            .build();
        match self.docker.create_container(Some(options), body).await {
            Ok(response) => {
                for warning in response.warnings {
                    tracing::warn!(container = %config.name, %warning, "engine warning on create");
                }
                Ok(response.id)
            }
            Err(err) if status(&err) == Some(409) => Err(RuntimeError::AlreadyExists {
                name: config.name.clone(),
            }),
            Err(err) if status(&err) == Some(404) => Err(RuntimeError::ImageNotAvailable {
                image: config.image.clone(),
                reason: format!("the engine has no such image: {err}"),
            }),
            Err(err) => Err(engine_error("create", &config.name, err)),
        }
    }

    async fn start(&self, container: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(container, None)
            .await
            .map_err(|err| engine_error("start", container, err))
    }

    async fn inspect(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|err| engine_error("inspect", container, err))?;
        Ok(container_info(container, inspect))
    }

    async fn wait_exit(&self, container: &str) -> Result<(), RuntimeError> {
        /// Pause before asking again when a wait ended without an answer,
        /// so a sick connection cannot turn this into a busy loop.
        const RETRY: Duration = Duration::from_millis(200);
        loop {
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut stream = self.docker.wait_container(container, Some(options));
            match stream.next().await {
                // bollard turns a non-zero exit into an error; it is an exit all the same.
                Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => {}
                Some(Err(err)) if status(&err) == Some(404) => {
                    return Err(RuntimeError::NotFound {
                        container: container.to_owned(),
                    });
                }
                // bollard's per-request timeout covers the wait too, so a long
                // task outlives it; a dropped connection ends the stream.
                Some(Err(BollardError::RequestTimeoutError)) | None => {
                    tokio::time::sleep(RETRY).await;
                }
                Some(Err(err)) => return Err(engine_error("wait", container, err)),
            }
            // The wait is a hint; inspect says whether it really stopped.
            if self.inspect(container).await?.state != ContainerState::Running {
                return Ok(());
            }
        }
    }

    async fn stop(&self, container: &str, grace: Duration) -> Result<StopOutcome, RuntimeError> {
        // Docker's own stop endpoint takes the grace in whole seconds; a
        // SIGTERM of our own and a timed wait keep the server's milliseconds.
        self.kill(container, "SIGTERM").await?;
        if let Ok(waited) = tokio::time::timeout(grace, self.wait_exit(container)).await {
            waited?;
            return Ok(StopOutcome { sigkilled: false });
        }
        tracing::info!(
            container,
            grace_ms = grace.as_millis() as u64,
            "grace period over, sending SIGKILL"
        );
        self.kill(container, "SIGKILL").await?;
        match tokio::time::timeout(SIGKILL_WAIT, self.wait_exit(container)).await {
            Ok(waited) => waited.map(|()| StopOutcome { sigkilled: true }),
            Err(_) => Err(RuntimeError::Engine {
                operation: "stop",
                container: container.to_owned(),
                message: format!("still running {} s after SIGKILL", SIGKILL_WAIT.as_secs()),
            }),
        }
    }

    async fn logs_tail(
        &self,
        container: &str,
        max_lines: u32,
        max_bytes: usize,
    ) -> Result<LogTail, RuntimeError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&max_lines.to_string())
            .build();
        let mut stream = self.docker.logs(container, Some(options));
        let mut raw = Vec::new();
        let mut n_lines: u64 = 0;
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(|err| engine_error("logs", container, err))?;
            let bytes = chunk.as_ref();
            n_lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            raw.extend_from_slice(bytes);
            // Keep memory bounded on a huge line: twice the cap leaves room to
            // cut at a line start.
            if raw.len() > max_bytes.saturating_mul(2) {
                raw.drain(..raw.len() - max_bytes);
            }
        }
        // `max_lines` lines back means there may have been more: the engine
        // does not say, so the tail errs on the side of "truncated".
        let truncated = n_lines >= u64::from(max_lines);
        Ok(LogTail::from_raw(&raw, max_bytes, truncated))
    }

    async fn list(&self, executor_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_EXECUTOR}={executor_id}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| engine_error("list", executor_id, err))?;
        let mut infos = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            // The summary lacks OOMKilled and the exact times; inspect has them.
            match self.inspect(&id).await {
                Ok(info) => infos.push(info),
                // Removed between list and inspect: it is not there.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(infos)
    }

    async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if status(&err) == Some(404) => Ok(()),
            // 409: removal already in progress; it will be gone shortly.
            Err(err) if status(&err) == Some(409) => Ok(()),
            Err(err) => Err(engine_error("remove", container, err)),
        }
    }
}
