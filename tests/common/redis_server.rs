//! A private `redis-server` for one test: started on a free loopback port
//! (never the system Redis), killed on drop. No persistence unless asked
//! ([`Redis::start_persistent`]). Commands go through the `redis` crate's
//! blocking client. Also: TLS-only servers ([`Redis::start_tls`], with a
//! throwaway CA from [`TlsFiles::generate`]), replicas, Redis Cluster nodes
//! and sentinels, each its own process on its own port.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::free_port;

/// Deadline for Redis to answer after a (re)start.
const START: Duration = Duration::from_secs(30);

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// Every write is in the append-only file before it is acknowledged,
    /// so a SIGKILL loses nothing Redis answered.
    persistent: bool,
    /// TLS only (the plain port off), with these files.
    tls: Option<TlsFiles>,
    /// More `redis-server` arguments (cluster, replica).
    extra: Vec<String>,
    /// A sentinel: its config file's text (the file is written in `dir`).
    sentinel: Option<String>,
    /// `requirepass` (and `masterauth`, for a replica or a demoted master).
    password: Option<String>,
}

/// A throwaway CA and a server certificate it signed, for 127.0.0.1.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Made with the openssl CLI in `dir` (P-256 keys: quick to make).
    pub fn generate(dir: &std::path::Path) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"],
            &["-subj", "/CN=stapes test CA", "-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=127.0.0.1"],
        ]
        .concat());
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        }
    }
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        Redis::launch(port, false)
    }

    /// A Redis that keeps its data across [`Redis::kill`] and
    /// [`Redis::restart`] (append-only file, fsync on every write).
    pub fn start_persistent() -> Redis {
        Redis::launch(free_port(), true)
    }

    /// TLS on a free port, the plain port off; clients are not asked for
    /// certificates.
    pub fn start_tls(tls: &TlsFiles) -> Redis {
        Redis::launch_with(free_port(), Some(tls.clone()), Vec::new(), None)
    }

    /// A server that requires `password` of its clients (and gives it to
    /// its master, once it is made a replica).
    pub fn start_with_password(password: &str) -> Redis {
        let mut redis = Redis::new(free_port(), None, Vec::new(), None);
        redis.password = Some(password.to_owned());
        redis.spawn();
        redis
    }

    /// A replica of `master` (read-only, as Redis makes replicas), with
    /// the master's password if it has one.
    pub fn start_replica_of(master: &Redis) -> Redis {
        let args = vec!["--replicaof".into(), "127.0.0.1".into(), master.port.to_string()];
        let mut redis = Redis::new(free_port(), None, args, None);
        redis.password = master.password.clone();
        redis.spawn();
        redis
    }

    /// A Redis Cluster node, not yet part of a cluster (see
    /// [`create_cluster`]).
    pub fn start_cluster_node() -> Redis {
        // The bus port is named, not left at port + 10000: a free port
        // above 55535 would put the default past 65535.
        let bus = free_port().to_string();
        let args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"];
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["--cluster-port".to_owned(), bus]);
        Redis::launch_with(free_port(), None, args, None)
    }

    /// A sentinel watching `master` under the name `name`, a quorum of one;
    /// without a password of its own, whatever the master's.
    pub fn start_sentinel(master: &Redis, name: &str) -> Redis {
        let mut conf = format!(
            "sentinel monitor {name} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {name} 5000\n\
             sentinel failover-timeout {name} 10000\n",
            master.port
        );
        if let Some(password) = &master.password {
            conf.push_str(&format!("sentinel auth-pass {name} {password}\n"));
        }
        Redis::launch_with(free_port(), None, Vec::new(), Some(conf))
    }

    fn launch(port: u16, persistent: bool) -> Redis {
        let mut redis = Redis::new(port, None, Vec::new(), None);
        redis.persistent = persistent;
        redis.spawn();
        redis
    }

    fn launch_with(
        port: u16,
        tls: Option<TlsFiles>,
        extra: Vec<String>,
        sentinel: Option<String>,
    ) -> Redis {
        let mut redis = Redis::new(port, tls, extra, sentinel);
        redis.spawn();
        redis
    }

    fn new(
        port: u16,
        tls: Option<TlsFiles>,
        extra: Vec<String>,
        sentinel: Option<String>,
    ) -> Redis {
        let dir = std::env::temp_dir().join(format!("stapes-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Redis { port, child: None, dir, persistent: false, tls, extra, sentinel, password: None }
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(conf) = &self.sentinel {
            let file = self.dir.join("sentinel.conf");
            std::fs::write(&file, conf).unwrap();
            command.arg(file).arg("--sentinel");
        }
        match &self.tls {
            Some(tls) => {
                command.args(["--port", "0", "--tls-port", &self.port.to_string()]);
                command.arg("--tls-cert-file").arg(&tls.cert).arg("--tls-key-file").arg(&tls.key);
                command.arg("--tls-ca-cert-file").arg(&tls.ca).args(["--tls-auth-clients", "no"]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password, "--masterauth", password]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "yes"])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + START;
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not answer PING within {START:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Some(mut con) = self.try_con() else { return false };
        redis::cmd("PING").query::<String>(&mut con).is_ok()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let auth = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`, as `redis.nodes` lists it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn try_con(&self) -> Option<redis::Connection> {
        let client = match &self.tls {
            Some(tls) => {
                let root_cert = Some(std::fs::read(&tls.ca).ok()?);
                let certs = redis::TlsCertificates { client_tls: None, root_cert };
                redis::Client::build_with_tls(self.url(), certs).ok()?
            }
            None => redis::Client::open(self.url()).ok()?,
        };
        client.get_connection().ok()
    }

    pub fn con(&self) -> redis::Connection {
        self.try_con().expect("connect to the test redis")
    }

    /// SIGKILLs the server; [`Redis::restart`] brings it back on the same
    /// port, with its data only if it is persistent.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Kills the server (the data is lost unless persistent);
    /// [`Redis::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// One command; panics if Redis refuses it or the reply is not a `T`.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.con()).unwrap()
    }

    /// Subscribers of `channel` (0 while Redis is down).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let Some(mut con) = self.try_con() else { return 0 };
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query::<(String, i64)>(&mut con)
            .map_or(0, |(_, n)| n)
    }

    pub fn publish(&self, channel: &str, payload: &str) {
        let _: i64 = self.cmd(&["PUBLISH", channel, payload]);
    }

    pub fn rpush(&self, list: &str, payload: &str) {
        let _: i64 = self.cmd(&["RPUSH", list, payload]);
    }

    pub fn llen(&self, key: &str) -> i64 {
        self.cmd(&["LLEN", key])
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Joins Redis Cluster nodes into one cluster (no replicas, the slots
/// spread evenly) and waits until every node says the cluster is ok.
pub fn create_cluster(nodes: &[Redis]) {
    let addrs: Vec<String> = nodes.iter().map(Redis::addr).collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli must be installed with redis-server");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for node in nodes {
        super::wait_until("the cluster to be ok on every node", || {
            node.cmd::<String>(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
        });
    }
}
