//! `deploy/`: the systemd unit passes `systemd-analyze verify`, says what
//! stapes needs (user, limits, drain, hardening), and stapes runs the way
//! it says: as its own user, with its limits and its environment file, and
//! stops by draining. `deploy/install.sh` stages every file the unit names.
//!
//! The parts that need the machine's help (systemd-analyze, root to make a
//! user) say why when they cannot run; scripts/test installs systemd.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    ffi::CString,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use stapes::io::doctor::files_needed;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A unit file's entries: (section, key, value), in order, so repeated
/// keys (SystemCallFilter=) keep every value.
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            // A trailing backslash continues the line (systemd.syntax(7)).
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (key, value) =
                line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
            entries.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
        }
        Unit(entries)
    }

    fn shipped() -> Unit {
        Unit::parse(&std::fs::read_to_string(repo().join("deploy/stapes.service")).unwrap())
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value in force: the last one.
    fn get(&self, key: &str) -> &str {
        let section = if key == "WantedBy" { "Install" } else { "Service" };
        self.all(section, key).last().copied().unwrap_or_else(|| panic!("no {key}="))
    }

    fn seconds(&self, key: &str) -> f64 {
        let v = self.get(key);
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.trim().parse().unwrap();
        match unit {
            "" | "s" | "sec" => n,
            "min" | "m" => n * 60.0,
            other => panic!("unit {other} in {key}={v}"),
        }
    }
}

/// An `EnvironmentFile=` as systemd reads it: `KEY=value` lines, `#` and
/// `;` comments, optional quotes around the value.
fn environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';']))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not KEY=value: {l}"));
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

fn defaults() -> stapes::config::Config {
    stapes::config::embedded_default(&Default::default()).unwrap()
}

#[test]
fn the_unit_says_what_stapes_needs() {
    let unit = Unit::shipped();
    assert_eq!(unit.get("User"), "stapes");
    assert_eq!(unit.get("Group"), "stapes");
    assert_eq!(unit.get("EnvironmentFile"), "-/etc/stapes/stapes.env");
    assert_eq!(unit.get("ExecStart"), "/usr/local/bin/stapes --config /etc/stapes/config.yml");
    // Stop is the drain: SIGTERM, and time for the whole grace before SIGKILL.
    assert_eq!(unit.get("KillSignal"), "SIGTERM");
    let grace = defaults().server.shutdown_grace.as_secs_f64();
    assert!(unit.seconds("TimeoutStopSec") > grace + 1.0, "TimeoutStopSec within the drain");
    // No reload: SIGHUP is not handled, and would end stapes without the drain.
    assert!(unit.all("Service", "ExecReload").is_empty());
    assert_eq!(unit.get("Restart"), "on-failure");
    assert!(unit.get("RestartPreventExitStatus").split_whitespace().any(|s| s == "78"));
    // Open files: a million connections on up to 128 shards fit, and the
    // limit stays within the kernel's default ceiling (fs.nr_open).
    let nofile: u64 = unit.get("LimitNOFILE").parse().unwrap();
    assert!(nofile >= files_needed(1_000_000, 128), "LimitNOFILE={nofile}");
    assert!(nofile >= files_needed(defaults().server.max_connections as u64, 128));
    assert!(nofile <= 1_048_576, "above the default fs.nr_open");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ] {
        assert_eq!(unit.get(key), value, "{key}");
    }
    let families = unit.get("RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.split_whitespace().any(|f| f == family), "{family}");
    }
    // @system-service holds @aio, where io_uring's calls are.
    assert!(unit.all("Service", "SystemCallFilter").contains(&"@system-service"));
    assert_eq!(unit.get("WantedBy"), "multi-user.target");
}

/// A root for `systemd-analyze verify --root`: the system's own units (the
/// targets the unit is ordered against), the unit, and an executable where
/// ExecStart looks for stapes.
fn verify_root(unit_text: &str) -> Option<(PathBuf, Scratch)> {
    let units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())?;
    let root = Scratch::new("verify");
    copy_dir(units, &root.0.join("usr/lib/systemd/system"));
    let etc = root.0.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("stapes.service"), unit_text).unwrap();
    let bin = root.0.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    link_or_copy(Path::new(env!("CARGO_BIN_EXE_stapes")), &bin.join("stapes"));
    Some((root.0.clone(), root))
}

fn systemd_analyze(root: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("stapes.service")
        .output()
        .unwrap()
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!(
            "skipped: systemd-analyze is not installed (scripts/test installs Debian's systemd)"
        );
        return;
    }
    let text = std::fs::read_to_string(repo().join("deploy/stapes.service")).unwrap();
    let Some((root, _scratch)) = verify_root(&text) else {
        eprintln!("skipped: no systemd units under /usr/lib/systemd/system to verify against");
        return;
    };
    let out = systemd_analyze(&root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on an unknown key or a bad value and only warns, so
    // any word on stderr fails.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    // The same check catches a unit with a mistake in it.
    let broken = text.replace("ProtectSystem=strict", "ProtectSystem=strct");
    let (root, _scratch) = verify_root(&broken).unwrap();
    let out = systemd_analyze(&root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stapes.service") && stderr.contains("strct"), "{out:?}");
}

/// A directory under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("stapes-deploy-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Traversable by the service's user.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(link, target).unwrap();
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

/// A system user made as deploy/install.sh makes `stapes`, deleted on drop.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn create() -> Option<User> {
        let name = format!("stapes-t{}", std::process::id() % 1_000_000);
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("useradd failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let c = CString::new(name.clone()).unwrap();
        // SAFETY: getpwnam returns null or a pointer valid until the next call.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        assert!(!pw.is_null(), "{name} made but not found");
        // SAFETY: checked non-null just above.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Some(User { name, uid, gid })
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A child killed when the test fails, so that its user can be deleted
/// and its inherited stderr closes.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The scheduling policy (`stat` field 41) of each shard thread of `pid`.
/// A thread that ends while it is read (a Tokio helper) is left out.
fn shard_policies(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(task) = task.map(|t| t.path()) else { continue };
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else { continue };
        if !name.starts_with("stapes-shard-") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else { continue };
        // Fields after the parenthesised name start at field 3.
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        let policy = after_name.split_whitespace().nth(41 - 3).unwrap().parse().unwrap();
        found.push(policy);
    }
    found
}

#[test]
fn stapes_runs_the_way_the_unit_runs_it() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making the service's user needs root");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let Some(user) = User::create() else {
        eprintln!("skipped: useradd could not make a system user here");
        return;
    };
    let unit = Unit::shipped();
    let dir = Scratch::new("run");
    let port = free_port();

    // /etc/stapes as install.sh leaves it: root-owned, readable by the
    // service's group only. The secret comes from the environment file.
    let config = config("", "").replace(&format!("secret: {SECRET}"), "secret: ${DEPLOY_SECRET}");
    assert!(config.contains("${DEPLOY_SECRET}"));
    let config = config.replace("port: 6001", "port: 1");
    let config_path = dir.0.join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let shipped_env = std::fs::read_to_string(repo().join("deploy/stapes.env")).unwrap();
    let env_text = format!(
        "{shipped_env}\nSTAPES_PORT={port}\nDEPLOY_SECRET=\"{SECRET}\"\n# a comment\nSTAPES_LOG=warn\n"
    );
    let env_path = dir.0.join("stapes.env");
    std::fs::write(&env_path, &env_text).unwrap();
    for file in [&config_path, &env_path] {
        std::os::unix::fs::chown(file, Some(0), Some(user.gid)).unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let bin = dir.0.join("stapes");
    link_or_copy(Path::new(env!("CARGO_BIN_EXE_stapes")), &bin);

    // ExecStart, with the binary and config where this test put them.
    let exec: Vec<String> = unit
        .get("ExecStart")
        .split_whitespace()
        .map(|word| match word {
            "/usr/local/bin/stapes" => bin.display().to_string(),
            "/etc/stapes/config.yml" => config_path.display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    // The environment systemd gives a service with User=: PATH, the user's
    // identity, then the environment file.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &user.name, "--regid", &user.name, "--init-groups"])
        .args(["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"])
        .args(&exec)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("HOME", "/nonexistent")
        .env("SHELL", "/usr/sbin/nologin")
        .envs(environment_file(&env_text))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // LimitNOFILE= sets both limits. A container may forbid raising the
    // hard limit even to root: then the highest allowed is used and said.
    let wanted: u64 = unit.get("LimitNOFILE").parse().unwrap();
    let nofile = settable_nofile(wanted);
    if nofile != wanted {
        eprintln!("note: LimitNOFILE={wanted} refused here; running with {nofile}");
    }
    // SAFETY: only async-signal-safe calls (setrlimit, umask) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::umask(0o077);
            Ok(())
        });
    }
    let mut child = Reaped(cmd.spawn().unwrap());
    let child = &mut child.0;
    let pid = child.id();
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("stapes exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "stapes did not listen on the port from stapes.env");
        std::thread::sleep(Duration::from_millis(20));
    }
    // setpriv has exec'd stapes in place: the pid is stapes's own.
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), bin);
    let uid = user.uid.to_string();
    assert_eq!(status_field(pid, "Uid"), [uid.as_str(); 4].join(" "));
    let gid = user.gid.to_string();
    assert_eq!(status_field(pid, "Gid"), [gid.as_str(); 4].join(" "));
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let words: Vec<&str> = files.split_whitespace().collect();
    assert_eq!(words[3..5], [nofile.to_string(), nofile.to_string()], "{files}");
    // server.batch_scheduling's default holds for an unprivileged service.
    // The port answers once the listeners are bound, before the shard
    // threads start: wait for them (one per core, as `shards: 0` says).
    let cores = std::thread::available_parallelism().unwrap().get();
    let batch = libc::SCHED_BATCH as u32;
    wait_until("one stapes-shard thread per core, each under SCHED_BATCH", || {
        let shards = shard_policies(pid);
        shards.len() == cores && shards.iter().all(|&policy| policy == batch)
    });

    // The secret from the environment file signs a private subscription.
    let mut client =
        Client::connect(port, &format!("/app/{KEY}?protocol=7&client=js&version=8.4.0"));
    let v = client.subscribe("private-deploy");
    assert_eq!(v["event"], "pusher_internal:subscription_succeeded", "{v}");

    // Stop as systemd does: KillSignal, then up to TimeoutStopSec.
    let signal = match unit.get("KillSignal") {
        "SIGTERM" => libc::SIGTERM,
        other => panic!("unexpected KillSignal {other}"),
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, signal) };
    let v = client.event();
    assert_eq!(v["event"], "pusher:error", "{v}");
    assert_eq!(data_of(&v)["code"], 4200, "{v}");
    assert_eq!(client.next(), Got::Close(Some(4200)));
    let stop = Duration::from_secs_f64(unit.seconds("TimeoutStopSec"));
    let deadline = Instant::now() + stop;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("stapes outlived TimeoutStopSec ({stop:?}): systemd would SIGKILL it");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Exit 0: Restart=on-failure leaves a stopped service stopped.
    assert!(status.success(), "{status}");
}

/// The highest open-file limit up to `wanted` that this process may set.
fn settable_nofile(wanted: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills `lim`.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let try_set = |n: u64| {
        let probe = libc::rlimit { rlim_cur: lim.rlim_cur.min(n), rlim_max: n };
        // SAFETY: setrlimit reads `probe`; lowering and restoring our own limit.
        let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &probe) } == 0;
        // SAFETY: as above; restores what we read (raising back needs the
        // same privilege that just succeeded).
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        ok
    };
    if try_set(wanted) { wanted } else { lim.rlim_max.min(wanted) }
}

#[test]
fn install_sh_stages_every_file_the_unit_names() {
    let dest = Scratch::new("install");
    let run = || {
        let out = Command::new(repo().join("deploy/install.sh"))
            .env("DESTDIR", &dest.0)
            .env("STAPES_BIN", env!("CARGO_BIN_EXE_stapes"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    let unit = Unit::shipped();
    let at = |path: &str| dest.0.join(path.trim_start_matches(['-', '/']));
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let exec: Vec<&str> = unit.get("ExecStart").split_whitespace().collect();
    assert_eq!(mode(&at(exec[0])), 0o755);
    let config = at(exec[2]);
    assert_eq!(mode(&config), 0o640, "config.yml may hold secrets");
    let env = at(unit.get("EnvironmentFile"));
    assert_eq!(mode(&env), 0o640, "stapes.env holds secrets");
    assert_eq!(mode(config.parent().unwrap()), 0o750);
    let docs = unit.0.iter().find(|(_, k, _)| k == "Documentation").map(|(_, _, v)| v).unwrap();
    assert!(at(docs.trim_start_matches("file://")).is_file(), "{docs}");
    assert_eq!(
        std::fs::read(at("/etc/systemd/system/stapes.service")).unwrap(),
        std::fs::read(repo().join("deploy/stapes.service")).unwrap()
    );
    // The staged config is the reference one, and stapes accepts it.
    let out = Command::new(at(exec[0])).arg("--check-config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An operator's edits survive a second install.
    std::fs::write(&config, "# edited\n").unwrap();
    run();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");
}
