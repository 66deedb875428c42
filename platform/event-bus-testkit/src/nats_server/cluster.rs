//! [`NatsCluster`]: N real `nats-server` processes forming a JetStream
//! cluster on loopback.

use super::*;
use crate::process::Backoff;

/// An N-node JetStream cluster of real `nats-server` processes on loopback.
///
/// Nodes are indexed from 0; node `i` has server name `n{i+1}`. Each node has
/// its own temp dir, store dir, client, monitoring and cluster port.
#[derive(Debug)]
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
    startup_timeout: Duration,
}

impl NatsCluster {
    /// Starts an `n`-node cluster with default options (3 is the usual choice)
    /// and waits until every node is healthy and a meta leader is elected.
    pub async fn start(n: usize) -> Result<Self, HarnessError> {
        Self::start_with(n, NatsServerOptions::default()).await
    }

    /// Starts an `n`-node cluster; `opts` apply to every node (`server_name`
    /// is ignored, `jetstream` is forced on). Retries on fresh ports (up to 3
    /// attempts) if a chosen port turns out to be taken.
    pub async fn start_with(n: usize, opts: NatsServerOptions) -> Result<Self, HarnessError> {
        crate::orphans::reap_once();
        if n == 0 {
            return Err(HarnessError::InvalidArgument(
                "a cluster needs at least one node".into(),
            ));
        }
        let opts = NatsServerOptions {
            jetstream: true,
            ..opts
        };
        let binary = nats_server_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(&binary, n, &opts).await {
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn try_start(
        binary: &Path,
        n: usize,
        opts: &NatsServerOptions,
    ) -> Result<Self, HarnessError> {
        let ports = free_ports(3 * n)?;
        let name = format!("tk-{}", unique_suffix());
        let cluster_ports: Vec<u16> = (0..n).map(|i| ports[3 * i + 2]).collect();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let spec = ClusterSpec {
                name: name.clone(),
                port: cluster_ports[i],
                route_ports: cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| *p)
                    .collect(),
            };
            nodes.push(NatsServer::create(
                binary,
                opts,
                format!("n{}", i + 1),
                ports[3 * i],
                ports[3 * i + 1],
                Some(spec),
            )?);
        }
        let mut cluster = NatsCluster {
            name,
            nodes,
            startup_timeout: opts.startup_timeout,
        };
        let deadline = Instant::now() + opts.startup_timeout;
        for node in &mut cluster.nodes {
            node.spawn()?;
        }
        for node in &mut cluster.nodes {
            node.wait_ready(deadline).await?;
        }
        cluster.wait_for_meta_leader_until(deadline).await?;
        Ok(cluster)
    }

    /// The random cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if the cluster has no nodes (never the case for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// All nodes, index `i` being server `n{i+1}`.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i` (0-based; server name `n{i+1}`). Panics if out of range.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Mutable access to node `i`. Panics if out of range.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// Client URLs of all nodes (including killed ones).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Comma-joined client URLs, as accepted by NATS clients.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Index of the node with server name `name` (e.g. a meta leader name).
    pub fn node_index_by_name(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// SIGKILLs node `i`. Panics if out of range.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Stops node `i` gracefully (SIGTERM). Panics if out of range.
    pub async fn stop(&mut self, i: usize) -> Result<(), HarnessError> {
        self.nodes[i].stop().await
    }

    /// Restarts node `i` on its original ports and store dir, then waits until
    /// it is healthy (JetStream current) and the cluster has a live meta leader.
    /// Panics if out of range.
    pub async fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        let deadline = Instant::now() + self.startup_timeout;
        self.nodes[i].stop().await?;
        self.nodes[i].spawn_and_wait(deadline).await?;
        self.wait_for_meta_leader_until(deadline).await?;
        Ok(())
    }

    /// The meta leader reported by the first node the harness considers up,
    /// without waiting. May be stale right after the leader was killed.
    pub async fn meta_leader(&self) -> Result<Option<String>, HarnessError> {
        for node in self.nodes.iter().filter(|n| n.process.is_started()) {
            if let Ok(leader) = node.meta_leader().await {
                return Ok(leader);
            }
        }
        Ok(None)
    }

    /// Waits until every node that the harness has running reports `/healthz`
    /// 200 and the same meta leader, and that leader is one of those running
    /// nodes (so a killed leader is not accepted). Returns the leader's name.
    pub async fn wait_for_meta_leader(&self, timeout: Duration) -> Result<String, HarnessError> {
        self.wait_for_meta_leader_until(Instant::now() + timeout)
            .await
    }

    async fn wait_for_meta_leader_until(&self, deadline: Instant) -> Result<String, HarnessError> {
        let started = Instant::now();
        let mut backoff = Backoff::until(deadline);
        loop {
            let mut report = Vec::new();
            let mut leaders = HashSet::new();
            let mut all_ok = true;
            let up: Vec<&NatsServer> = self
                .nodes
                .iter()
                .filter(|n| n.process.is_started())
                .collect();
            for node in &up {
                let health = node.monitor_get("/healthz").await;
                let leader = node.meta_leader().await;
                let healthy = matches!(health, Ok((200, _)));
                match &leader {
                    Ok(Some(l)) => {
                        leaders.insert(l.clone());
                    }
                    _ => all_ok = false,
                }
                all_ok &= healthy;
                report.push(format!(
                    "{}: healthz={} leader={}",
                    node.name,
                    match &health {
                        Ok((code, body)) => format!("{code} {}", body.trim()),
                        Err(e) => e.to_string(),
                    },
                    match &leader {
                        Ok(l) => format!("{l:?}"),
                        Err(e) => e.to_string(),
                    }
                ));
            }
            if all_ok && !up.is_empty() && leaders.len() == 1 {
                let leader = leaders.into_iter().next().unwrap_or_default();
                if up.iter().any(|n| n.name == leader) {
                    return Ok(leader);
                }
                report.push(format!("leader {leader} is not a running node"));
            }
            if !backoff.wait().await {
                let mut diag = report.join("\n");
                for node in &self.nodes {
                    diag.push_str(&format!(
                        "\n--- {} log tail ---\n{}",
                        node.name,
                        node.log_tail(15)
                    ));
                }
                return Err(HarnessError::Timeout {
                    what: format!(
                        "cluster {} to agree on a live JetStream meta leader",
                        self.name
                    ),
                    waited: started.elapsed(),
                    log_tail: diag,
                });
            }
        }
    }
}
