//! `-netdev user`'s settings, known even to a build without libslirp (which then
//! refuses them by name).

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// A `hostfwd=` rule: connections to the host's `host_addr:host_port` go to the guest's
/// `guest_addr:guest_port` (the first DHCP address when `guest_addr` is unset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFwd {
    pub udp: bool,
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_addr: Option<Ipv4Addr>,
    pub guest_port: u16,
}

/// A `guestfwd=tcp:ADDR:PORT-cmd:COMMAND` rule: each guest connection to ADDR:PORT
/// talks to a new COMMAND's standard input and output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFwd {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub command: String,
}

/// The user-mode network, as `-netdev user,...` describes it (QEMU's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlirpConfig {
    /// `restrict=on`: the guest reaches nothing outside (hostfwd and guestfwd still work).
    pub restrict: bool,
    pub net: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub host: Ipv4Addr,
    pub dhcp_start: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub ipv6: bool,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub tftp: Option<PathBuf>,
    pub tftp_server_name: Option<String>,
    pub bootfile: Option<String>,
    pub hostfwd: Vec<HostFwd>,
    pub guestfwd: Vec<GuestFwd>,
}

impl Default for SlirpConfig {
    fn default() -> Self {
        SlirpConfig {
            restrict: false,
            net: Ipv4Addr::new(10, 0, 2, 0),
            mask: Ipv4Addr::new(255, 255, 255, 0),
            host: Ipv4Addr::new(10, 0, 2, 2),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            ipv6: true,
            hostname: None,
            domainname: None,
            tftp: None,
            tftp_server_name: None,
            bootfile: None,
            hostfwd: Vec::new(),
            guestfwd: Vec::new(),
        }
    }
}
