//! Network namespaces for partitions: each node runs in its own namespace with its own address
//! `10.A.B.<id>` on a veth pair to a bridge in the root namespace (address `10.A.B.254`), where the
//! chaos process and its clients stay. A partition is a set of iptables DROP rules inside the
//! namespaces of the nodes it separates (clients can still reach every node); healing flushes them.
//!
//! Everything is named `dtmc<pid>…`, so that parallel runs never collide, and removed on drop; a
//! new run first removes what runs whose process is gone left behind.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use crate::error::ChaosError;
use crate::error::Result;

/// Prefix of every namespace and interface this module creates.
const NAME_PREFIX: &str = "dtmc";
/// Address of the bridge (and so of the chaos process) in the run's /24.
const BRIDGE_HOST_OCTET: u8 = 254;

/// Runs a helper command and returns its standard output.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ChaosError::Command { command: command.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(ChaosError::Command {
            command,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this machine can run partition scenarios: root, `ip` and `iptables` present, and a
/// namespace can actually be created.
pub fn available() -> std::result::Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    for tool in ["ip", "iptables"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Err(format!("`{tool}` is missing (apt packages iproute2 iptables)"));
        }
    }
    let probe = format!("{NAME_PREFIX}{}probe", std::process::id());
    run("ip", &["netns", "add", &probe]).map_err(|e| e.to_string())?;
    let iptables = run("ip", &["netns", "exec", &probe, "iptables", "-S"]).map(|_| ());
    let _ = run("ip", &["netns", "del", &probe]);
    iptables.map_err(|e| format!("iptables does not work in a namespace: {e}"))
}

/// The pid encoded in a `dtmc<pid>…` name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links left behind by runs whose process is gone (and by this process).
pub fn cleanup_stale() {
    let me = std::process::id();
    let stale = |name: &str| owner_pid(name).is_some_and(|p| p == me || !pid_alive(p));
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(name) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = run("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            // "12: dtmc123b: <…" or "13: dtmc123h1@if2: <…"
            let Some(name) = line.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("")) else {
                continue;
            };
            if stale(name) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}

/// The namespaces, veths and bridge of one run. Dropping it removes them all.
pub struct Network {
    pid: u32,
    subnet: [u8; 3],
    bridge: String,
    /// Node id → namespace name.
    namespaces: BTreeMap<u64, String>,
    /// Whether a FORWARD accept rule for the bridge was added to the root namespace.
    forward_rule: bool,
}

impl Network {
    /// Creates a namespace per node id, all on one new bridge.
    pub fn create(node_ids: &[u64]) -> Result<Network> {
        cleanup_stale();
        let pid = std::process::id();
        // A /24 in 10.100.0.0–10.199.255.0 from the pid, so parallel runs use different subnets.
        let subnet = [10, 100 + ((pid >> 8) % 100) as u8, (pid & 0xff) as u8];
        let mut net = Network {
            pid,
            subnet,
            bridge: format!("{NAME_PREFIX}{pid}b"),
            namespaces: BTreeMap::new(),
            forward_rule: false,
        };
        run("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        let bridge_ip = format!("{}/24", net.bridge_ip());
        run("ip", &["addr", "add", &bridge_ip, "dev", &net.bridge])?;
        run("ip", &["link", "set", &net.bridge, "up"])?;
        // Hosts whose FORWARD policy is DROP (Docker) would drop bridged traffic when
        // bridge-nf-call-iptables is on; accept what stays on our bridge. Removed on drop.
        if run("iptables", &["-I", "FORWARD", "-i", &net.bridge, "-o", &net.bridge, "-j", "ACCEPT"]).is_ok() {
            net.forward_rule = true;
        }
        for id in node_ids {
            net.add_node(*id)?;
        }
        Ok(net)
    }

    fn add_node(&mut self, id: u64) -> Result<()> {
        let ns = format!("{NAME_PREFIX}{}n{id}", self.pid);
        let host_if = format!("{NAME_PREFIX}{}h{id}", self.pid);
        run("ip", &["netns", "add", &ns])?;
        self.namespaces.insert(id, ns.clone());
        run("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        run("ip", &["link", "set", &host_if, "master", &self.bridge])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        let addr = format!("{}/24", self.node_ip(id));
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], BRIDGE_HOST_OCTET)
    }

    pub fn node_ip(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], u8::try_from(id).unwrap_or(0))
    }

    pub fn namespace(&self, id: u64) -> Option<&str> {
        self.namespaces.get(&id).map(String::as_str)
    }

    /// Cuts every node of `side` off from every node not in it, both ways. Clients (the bridge
    /// address) still reach every node, as a source system in another network would.
    pub fn partition(&self, side: &BTreeSet<u64>) -> Result<()> {
        for (id, ns) in &self.namespaces {
            let mine = side.contains(id);
            for other in self.namespaces.keys().filter(|o| side.contains(o) != mine) {
                let ip = self.node_ip(*other).to_string();
                run("ip", &["netns", "exec", ns, "iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
                run("ip", &["netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<()> {
        for ns in self.namespaces.values() {
            run("ip", &["netns", "exec", ns, "iptables", "-F"])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.namespaces.values() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        for id in self.namespaces.keys() {
            let _ = run("ip", &["link", "del", &format!("{NAME_PREFIX}{}h{id}", self.pid)]);
        }
        if self.forward_rule {
            let _ = run("iptables", &["-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner_pid() {
        assert_eq!(owner_pid("dtmc1234n2"), Some(1234));
        assert_eq!(owner_pid("dtmc99b"), Some(99));
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(owner_pid("dtmcprobe"), None);
    }
}
