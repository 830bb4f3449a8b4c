//! A private `redis-server` for one test: started on a free loopback port
//! (never the system Redis), killed on drop. No persistence unless asked
//! ([`Redis::start_persistent`]). Commands go through the `redis` crate's
//! blocking client.

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

    fn launch(port: u16, persistent: bool) -> Redis {
        let dir = std::env::temp_dir().join(format!("stapes-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis { port, child: None, dir, persistent };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "yes"])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(&self.dir)
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
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn try_con(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
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
