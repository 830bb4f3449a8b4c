//! How stapes reaches Redis in each `redis.mode`, with TLS or not: the
//! bridge's tasks, its cluster side and the push thread's error lists all
//! connect through here.
//!
//! They ask for two things, at every (re)connect:
//!
//! - a **command connection** ([`Conn`]): a multiplexed connection to the
//!   server (standalone) or to the master the sentinels name at that
//!   moment (sentinel), or a Redis Cluster connection that routes each
//!   command by its first key (cluster);
//! - a **pub/sub connection**: classic SUBSCRIBE on the server, on the
//!   current master, or on the first reachable seed node of a cluster
//!   (PUBLISH is broadcast to every node of a Redis Cluster, so any one
//!   node hears everything).
//!
//! Nothing here retries: a failure goes back to the caller's own
//! reconnect and back-off, and the next attempt starts from the
//! configuration again (for sentinel, by asking the sentinels anew, which
//! is how a failover is followed).

use std::time::Duration;

use futures_util::{FutureExt, future::join_all};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError, RedisFuture, RedisResult,
    TlsCertificates, Value,
    aio::{ConnectionLike, MultiplexedConnection, PubSub},
    cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
};

use crate::config::{RedisConfig, RedisMode};

/// Why the Redis configuration cannot be turned into connections
/// (validation normally catches these first).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `redis.url` did not parse.
    #[error("redis.url: {0}")]
    Url(RedisError),
    /// An entry of `redis.nodes` is not `host:port`.
    #[error("redis.nodes: {0:?} is not host:port")]
    Node(String),
    /// No seed node to reach the deployment through.
    #[error("redis.nodes: empty, and no redis.url to use instead")]
    NoNodes,
    /// `redis.tls_ca_file` cannot be read.
    #[error("redis.tls_ca_file: {0}")]
    CaFile(std::io::Error),
    /// The cluster client refused the seeds (for instance a TLS setting).
    #[error("redis cluster client: {0}")]
    Cluster(RedisError),
}

/// What every connection is made from, built once at start-up.
pub struct RedisLink {
    target: Target,
    tls: bool,
    /// The CA to trust instead of the system's store, if configured.
    certs: Option<TlsCertificates>,
    /// Database and password for connections to data nodes.
    settings: RedisConnectionInfo,
    connect_timeout: Duration,
}

enum Target {
    Standalone(Client),
    Cluster { client: Box<ClusterClient>, seeds: Vec<(String, u16)> },
    Sentinel { sentinels: Vec<(String, u16)>, master: String },
}

impl RedisLink {
    /// Reads the `redis:` section; connects nothing.
    pub fn new(config: &RedisConfig, connect_timeout: Duration) -> Result<Self, LinkError> {
        let tls = config.uses_tls();
        let url = if config.url.trim().is_empty() {
            None
        } else {
            Some(config.url.trim().into_connection_info().map_err(LinkError::Url)?)
        };
        let mut settings = url.as_ref().map(|u| u.redis_settings().clone()).unwrap_or_default();
        if let Some(password) = &config.password {
            settings = settings.set_password(password);
        }
        let certs = match &config.tls_ca_file {
            Some(file) if tls => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(file).map_err(LinkError::CaFile)?),
            }),
            _ => None,
        };
        let nodes = config
            .nodes
            .iter()
            .map(|n| host_port(n).ok_or_else(|| LinkError::Node(n.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        // The target is built from the node settings, so they come first;
        // the placeholder never connects.
        let mut link = Self {
            target: Target::Sentinel { sentinels: Vec::new(), master: String::new() },
            tls,
            certs,
            settings,
            connect_timeout,
        };
        link.target = match config.mode {
            RedisMode::Standalone => {
                let info = url.ok_or(LinkError::NoNodes)?;
                let addr = match info.addr() {
                    ConnectionAddr::Tcp(host, port) => link.addr(host, *port),
                    ConnectionAddr::TcpTls { host, port, .. } => link.addr(host, *port),
                    other => other.clone(),
                };
                let info = info.set_addr(addr).set_redis_settings(link.settings.clone());
                Target::Standalone(link.client(info).map_err(LinkError::Url)?)
            }
            RedisMode::Cluster => {
                let seeds = match (nodes.is_empty(), url.as_ref().map(ConnectionInfo::addr)) {
                    (false, _) => nodes,
                    (
                        true,
                        Some(
                            ConnectionAddr::Tcp(h, p)
                            | ConnectionAddr::TcpTls { host: h, port: p, .. },
                        ),
                    ) => {
                        vec![(h.clone(), *p)]
                    }
                    (true, _) => return Err(LinkError::NoNodes),
                };
                let infos = seeds
                    .iter()
                    .map(|(h, p)| link.info(h, *p))
                    .collect::<RedisResult<Vec<ConnectionInfo>>>()
                    .map_err(LinkError::Cluster)?;
                let mut builder = ClusterClientBuilder::new(infos);
                if let Some(password) = link.settings.password() {
                    builder = builder.password(password);
                }
                if let Some(username) = link.settings.username() {
                    builder = builder.username(username);
                }
                if tls {
                    builder = builder.tls(redis::TlsMode::Secure);
                }
                if let Some(certs) = &link.certs {
                    builder = builder.certs(certs.clone());
                }
                Target::Cluster {
                    client: Box::new(builder.build().map_err(LinkError::Cluster)?),
                    seeds,
                }
            }
            RedisMode::Sentinel => {
                if nodes.is_empty() {
                    return Err(LinkError::NoNodes);
                }
                let master = config.sentinel_master.clone().unwrap_or_default();
                Target::Sentinel { sentinels: nodes, master }
            }
        };
        Ok(link)
    }

    /// Whether commands go to a Redis Cluster, where a MULTI/EXEC or a
    /// pipeline must stay within one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// A new command connection. `response` bounds each reply (`None`: no
    /// bound, for blocking commands).
    pub async fn command(&self, response: Option<Duration>) -> RedisResult<Conn> {
        match &self.target {
            Target::Standalone(client) => {
                let config = self.conn_config(response);
                Ok(Conn::Single(
                    client.get_multiplexed_async_connection_with_config(&config).await?,
                ))
            }
            Target::Cluster { client, .. } => {
                let mut config = ClusterConfig::new().set_connection_timeout(self.connect_timeout);
                if let Some(response) = response {
                    config = config.set_response_timeout(response);
                }
                let connect = client.get_async_connection_with_config(config);
                let conn = tokio::time::timeout(self.connect_timeout * 2, connect)
                    .await
                    .map_err(|_| timed_out("connecting to the cluster"))??;
                Ok(Conn::Cluster(conn))
            }
            Target::Sentinel { sentinels, master } => {
                let mut last = None;
                for (host, port) in sentinels {
                    match self.master_conn(host, *port, master, response).await {
                        Ok(conn) => return Ok(Conn::Single(conn)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| timed_out("asking the sentinels")))
            }
        }
    }

    /// A new pub/sub connection, not yet subscribed to anything.
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        match &self.target {
            Target::Standalone(client) => self.pubsub_on(client).await,
            Target::Cluster { seeds, .. } => {
                let mut last = None;
                for (host, port) in seeds {
                    let client = self.client(self.info(host, *port)?)?;
                    match self.pubsub_on(&client).await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| timed_out("connecting to a seed node")))
            }
            Target::Sentinel { sentinels, master } => {
                let mut last = None;
                for (host, port) in sentinels {
                    // A replica hears the master's PUBLISHes too, so the
                    // sentinel's answer is not checked with ROLE here.
                    let found = match self.ask_sentinel(host, *port, master).await {
                        Ok((host, port)) => self.info(&host, port).and_then(|i| self.client(i)),
                        Err(e) => Err(e),
                    };
                    let subscribed = match found {
                        Ok(client) => self.pubsub_on(&client).await,
                        Err(e) => Err(e),
                    };
                    match subscribed {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| timed_out("asking the sentinels")))
            }
        }
    }

    async fn pubsub_on(&self, client: &Client) -> RedisResult<PubSub> {
        tokio::time::timeout(self.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("connecting for pub/sub"))?
    }

    /// The master one sentinel names, connected and checked to be a master
    /// (mid-failover a sentinel may name a server not yet promoted).
    async fn master_conn(
        &self,
        host: &str,
        port: u16,
        master: &str,
        response: Option<Duration>,
    ) -> RedisResult<MultiplexedConnection> {
        let (host, port) = self.ask_sentinel(host, port, master).await?;
        let client = self.client(self.info(&host, port)?)?;
        let config = self.conn_config(response);
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok(conn),
            Some(Value::SimpleString(role)) if role == "master" => Ok(conn),
            _ => Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the server the sentinel named is not a master (yet)",
            ))),
        }
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel.
    async fn ask_sentinel(
        &self,
        host: &str,
        port: u16,
        master: &str,
    ) -> RedisResult<(String, u16)> {
        let config = self.conn_config(Some(self.connect_timeout));
        let bare = self.info(host, port)?.set_redis_settings(RedisConnectionInfo::default());
        let mut conn = match self.settings.password() {
            Some(_) => {
                let client = self.client(self.info(host, port)?)?;
                match client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(conn) => conn,
                    // Sentinels often run without a password while the
                    // master has one, and refuse the AUTH: ask again
                    // without it. A network failure is not that.
                    Err(e) if !(e.is_io_error() || e.is_timeout() || e.is_connection_refusal()) => {
                        self.client(bare)?
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                self.client(bare)?.get_multiplexed_async_connection_with_config(&config).await?
            }
        };
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut conn)
            .await?;
        addr.ok_or_else(|| {
            RedisError::from((
                ErrorKind::Client,
                "the sentinel does not know redis.sentinel_master",
            ))
        })
    }

    fn conn_config(&self, response: Option<Duration>) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(response)
    }

    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    }

    /// A data node's (or sentinel's) connection info: this deployment's
    /// TLS, database and password.
    fn info(&self, host: &str, port: u16) -> RedisResult<ConnectionInfo> {
        let info = self.addr(host, port).into_connection_info()?;
        Ok(info.set_redis_settings(self.settings.clone()))
    }

    fn client(&self, info: ConnectionInfo) -> RedisResult<Client> {
        match (&self.certs, info.addr()) {
            (Some(certs), ConnectionAddr::TcpTls { .. }) => {
                Client::build_with_tls(info, certs.clone())
            }
            _ => Client::open(info),
        }
    }
}

/// `host:port`, the port required.
fn host_port(node: &str) -> Option<(String, u16)> {
    let (host, port) = node.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?)).filter(|(h, _)| !h.is_empty())
}

fn timed_out(what: &str) -> RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("redis timed out {what}")).into()
}

/// A command connection in any mode. Cloning shares it, as with
/// [`MultiplexedConnection`].
#[derive(Clone)]
pub enum Conn {
    /// Standalone or the sentinels' master.
    Single(MultiplexedConnection),
    /// Redis Cluster: each command to the node owning its first key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            // The cluster client sends a pipeline to one node and refuses one
            // whose keys span slots; a plain (not MULTI) pipeline has no
            // atomicity to keep, so its commands go one by one, each to its
            // own node, all at once.
            Self::Cluster(c) if !pipeline.is_transaction() => {
                let c = c.clone();
                async move {
                    let sent = pipeline.cmd_iter().map(|cmd| {
                        let mut c = c.clone();
                        async move { c.req_packed_command(cmd).await }
                    });
                    join_all(sent).await.into_iter().collect()
                }
                .boxed()
            }
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_host_and_port() {
        assert_eq!(host_port("127.0.0.1:7000"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(host_port(" redis-a:6379 "), Some(("redis-a".into(), 6379)));
        assert_eq!(host_port("[::1]:6379"), Some(("::1".into(), 6379)));
        assert_eq!(host_port("redis-a"), None);
        assert_eq!(host_port(":6379"), None);
    }

    #[test]
    fn the_password_and_tls_reach_every_mode() {
        let mut config = RedisConfig::new("redis://:secret@127.0.0.1:6379/2");
        config.tls = Some(true);
        let link = RedisLink::new(&config, Duration::from_secs(1)).expect("standalone");
        assert!(!link.is_cluster());
        let Target::Standalone(client) = &link.target else { panic!("standalone") };
        let info = client.get_connection_info();
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
        assert_eq!(
            (info.redis_settings().password(), info.redis_settings().db()),
            (Some("secret"), 2)
        );

        config.mode = RedisMode::Cluster;
        config.url = String::new();
        config.password = Some("other".into());
        config.nodes = vec!["127.0.0.1:7000".into(), "127.0.0.1:7001".into()];
        let link = RedisLink::new(&config, Duration::from_secs(1)).expect("cluster");
        assert!(link.is_cluster());
        assert_eq!(link.settings.password(), Some("other"));
        let info = link.info("h", 1).expect("an address");
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));

        config.mode = RedisMode::Sentinel;
        config.nodes = vec!["nohost".into()];
        assert!(matches!(RedisLink::new(&config, Duration::from_secs(1)), Err(LinkError::Node(_))));
    }
}
