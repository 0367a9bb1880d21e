//! Devices in a network namespace of their own (Linux `ip netns`).
//!
//! A device whose config says `netns = "NAME"` is dialled from inside `/run/netns/NAME`: the
//! socket is made by a short-lived thread that has joined that namespace, so the gateway reaches a
//! device that nothing in the gateway's own namespace can reach (a device bound to the
//! namespace's loopback is unreachable from every other namespace). `ward quickstart --isolated`
//! puts its simulated devices there; a gateway with a leg in an isolated device network can use
//! the same key.
//!
//! The namespace is only ever joined by a thread spawned for that one socket, never by a runtime
//! worker, so no other socket of the gateway is created in the wrong namespace.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Run `f` on a fresh thread that has joined network namespace `name`, and return what it
/// returns. Sockets `f` creates belong to that namespace for their whole life.
pub fn run_in<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let path = path_of(name);
    let handle = std::thread::Builder::new()
        .name("ward-netns".into())
        .spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("network namespace {}: {e}", path.display()),
                )
            })?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| {
                io::Error::other(format!(
                    "joining network namespace {} (needs root): {e}",
                    path.display()
                ))
            })?;
            f()
        })?;
    handle
        .join()
        .map_err(|_| io::Error::other("the network-namespace thread panicked"))?
}

/// Connect to `addr` from inside namespace `name`, within `timeout`.
pub async fn connect_in(
    name: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let name = name.to_owned();
    let std = tokio::task::spawn_blocking(move || {
        run_in(&name, move || {
            std::net::TcpStream::connect_timeout(&addr, timeout)
        })
    })
    .await
    .map_err(|_| io::Error::other("the connect task failed"))??;
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// Bind a TCP listener on `addr` inside namespace `name`.
pub fn bind_in(name: &str, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = run_in(name, move || std::net::TcpListener::bind(addr))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// A named network namespace this process made, with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

/// Why a namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// Not running as root.
    #[error("network namespaces need root (run as root, or without --isolated)")]
    NotRoot,
    /// `ip` missing or failing.
    #[error("`ip {args}` failed: {why} (is iproute2 installed? Debian: apt-get install iproute2)")]
    Ip {
        /// The arguments.
        args: String,
        /// What went wrong.
        why: String,
    },
}

fn ip(args: &[&str]) -> Result<(), NamespaceError> {
    let failed = |why: String| NamespaceError::Ip {
        args: args.join(" "),
        why,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

impl Namespace {
    /// Make namespace `name` (replacing a stale one of that name left by a killed run) and bring
    /// its loopback up.
    pub fn create(name: &str) -> Result<Namespace, NamespaceError> {
        if !rustix::process::geteuid().is_root() {
            return Err(NamespaceError::NotRoot);
        }
        if path_of(name).exists() {
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name])?;
        let ns = Namespace { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (what `netns =` in a device's config names).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, reason = %e, "could not delete the network namespace");
        }
    }
}
