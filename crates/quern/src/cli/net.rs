//! The network options, as QEMU spells them: `-netdev TYPE,id=ID,...` with
//! `-device e1000,netdev=ID,mac=,addr=,romfile=,id=`; `-nic TYPE,...,model=,mac=` (a
//! backend and its card in one); and the old `-net nic,...` with `-net TYPE,...` (one
//! card and one backend on QEMU's hub 0). Backends: `user` (libslirp), `stream` and
//! `socket` (TCP or UNIX, listening or connecting), `tap`. Anything else is refused by
//! name.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use quern_net::{GuestFwd, HostFwd, Netdev, NetdevKind, SlirpConfig, StreamAddr};

use super::opts::Opts;

/// A network card the options ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSpec {
    pub mac: Option<[u8; 6]>,
    /// The backend's id.
    pub netdev: Option<String>,
    /// PCI device number.
    pub addr: Option<u8>,
    /// `romfile=`: `Some("")` for no option ROM, `None` for the default.
    pub romfile: Option<PathBuf>,
    pub id: Option<String>,
    /// QEMU's default card, not asked for.
    pub implicit: bool,
}

/// The network options gathered, resolved by [`Net::finish`].
#[derive(Default)]
pub struct Net {
    netdevs: Vec<Netdev>,
    nics: Vec<NicSpec>,
    /// `-net nic` cards and `-net TYPE` backends (QEMU's hub 0).
    hub_nics: Vec<NicSpec>,
    hub_backends: Vec<Netdev>,
    /// Any of -net, -nic or -netdev given (QEMU's default network is off then).
    pub given: bool,
}

/// QEMU's first default MAC; later cards count up in the last byte.
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Card models quern has (`model=`).
const MODELS: &[&str] = &["e1000"];

pub fn parse_mac(v: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = v.split([':', '-']).collect();
    let bytes: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| parts.iter().map(|p| (p.len() == 2).then(|| u8::from_str_radix(p, 16).ok()).flatten()).collect())
        .flatten();
    match bytes {
        Some(b) if b[0] & 1 == 0 => Ok(b.try_into().expect("six bytes")),
        Some(_) => Err(format!("mac={v}: a multicast address cannot be a card's")),
        None => Err(format!("mac={v}: expected six hex bytes like 52:54:00:12:34:56")),
    }
}

fn parse_ip(key: &str, v: &str) -> Result<Ipv4Addr, String> {
    v.parse().map_err(|_| format!("{key}={v}: expected an IPv4 address"))
}

/// `hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`.
fn parse_hostfwd(v: &str) -> Result<HostFwd, String> {
    let bad = |why: &str| format!("hostfwd={v}: {why} (expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport)");
    let (proto, rest) = match v.split_once(':') {
        Some(("tcp" | "", r)) => (false, r),
        Some(("udp", r)) => (true, r),
        _ => return Err(bad("the protocol must be tcp or udp")),
    };
    let (host, guest) = rest.split_once('-').ok_or_else(|| bad("no '-' between the host and guest sides"))?;
    let side = |s: &str| -> Result<(Option<Ipv4Addr>, u16), String> {
        let (a, p) = s.split_once(':').ok_or_else(|| bad("an address and port need a ':'"))?;
        let addr = if a.is_empty() { None } else { Some(a.parse().map_err(|_| bad("not an IPv4 address"))?) };
        let port = p.parse::<u16>().map_err(|_| bad("not a port number"))?;
        Ok((addr, port))
    };
    let ((host_addr, host_port), (guest_addr, guest_port)) = (side(host)?, side(guest)?);
    if guest_port == 0 {
        return Err(bad("the guest port cannot be 0"));
    }
    Ok(HostFwd { udp: proto, host_addr: host_addr.unwrap_or(Ipv4Addr::UNSPECIFIED), host_port, guest_addr, guest_port })
}

/// `guestfwd=[tcp]:SERVER:PORT-cmd:COMMAND`.
fn parse_guestfwd(v: &str) -> Result<GuestFwd, String> {
    let bad = |why: &str| format!("guestfwd={v}: {why} (expected tcp:server:port-cmd:command)");
    let rest = v.strip_prefix("tcp:").or_else(|| v.strip_prefix(':')).unwrap_or(v);
    let (target, cmd) = rest.split_once('-').ok_or_else(|| bad("no '-' before the command"))?;
    let command = cmd
        .strip_prefix("cmd:")
        .ok_or_else(|| bad("only cmd: forwards are supported (a chardev needs -chardev, not built yet)"))?;
    let (addr, port) = target.split_once(':').ok_or_else(|| bad("the server needs an address and a port"))?;
    Ok(GuestFwd {
        addr: addr.parse().map_err(|_| bad("not an IPv4 address"))?,
        port: port.parse().map_err(|_| bad("not a port number"))?,
        command: command.to_string(),
    })
}

/// `net=ADDR[/MASK]`: the mask as a prefix length or dotted.
fn parse_net(v: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, m) = v.split_once('/').unwrap_or((v, "24"));
    let addr = parse_ip("net", a)?;
    let mask = match m.parse::<u32>() {
        Ok(n @ 1..=30) => Ipv4Addr::from(u32::MAX << (32 - n)),
        Ok(_) => return Err(format!("net={v}: the prefix must be 1 to 30 bits")),
        Err(_) => parse_ip("net", m)?,
    };
    Ok((Ipv4Addr::from(u32::from(addr) & u32::from(mask)), mask))
}

const USER_KEYS: &[&str] = &[
    "type",
    "id",
    "net",
    "host",
    "restrict",
    "restricted",
    "dhcpstart",
    "dns",
    "hostfwd",
    "guestfwd",
    "tftp",
    "bootfile",
    "hostname",
    "domainname",
    "ipv4",
    "ipv6",
    "tftp-server-name",
];

fn user(o: &Opts) -> Result<NetdevKind, String> {
    let mut c = SlirpConfig::default();
    if let Some((net, mask)) = o.get("net").map(parse_net).transpose()? {
        // Unset addresses follow the network, as QEMU's .2, .3 and .15.
        let at = |n: u32| Ipv4Addr::from(u32::from(net) | n);
        (c.net, c.mask, c.host, c.dns, c.dhcp_start) = (net, mask, at(2), at(3), at(15));
    }
    let inside = |key: &str, a: Ipv4Addr| -> Result<Ipv4Addr, String> {
        if u32::from(a) & u32::from(c.mask) != u32::from(c.net) {
            return Err(format!("{key}={a}: not in the guest's network {}/{}", c.net, c.mask));
        }
        Ok(a)
    };
    if let Some(v) = o.get("host") {
        c.host = inside("host", parse_ip("host", v)?)?;
    }
    if let Some(v) = o.get("dns") {
        c.dns = inside("dns", parse_ip("dns", v)?)?;
    }
    if let Some(v) = o.get("dhcpstart") {
        c.dhcp_start = inside("dhcpstart", parse_ip("dhcpstart", v)?)?;
    }
    c.restrict = o.get_bool("restrict")?.or(o.get_bool("restricted")?).unwrap_or(false);
    if o.get_bool("ipv4")? == Some(false) {
        return Err("ipv4=off: an IPv6-only user network is not supported".into());
    }
    c.ipv6 = o.get_bool("ipv6")?.unwrap_or(true);
    c.hostname = o.get("hostname").map(str::to_string);
    c.domainname = o.get("domainname").map(str::to_string);
    c.tftp_server_name = o.get("tftp-server-name").map(str::to_string);
    c.bootfile = o.get("bootfile").map(str::to_string);
    if let Some(dir) = o.get("tftp") {
        let p = PathBuf::from(dir);
        if !p.is_dir() {
            return Err(format!("tftp={dir}: not a directory"));
        }
        c.tftp = Some(p);
    }
    c.hostfwd = o.get_all("hostfwd").map(parse_hostfwd).collect::<Result<_, _>>()?;
    c.guestfwd = o.get_all("guestfwd").map(parse_guestfwd).collect::<Result<_, _>>()?;
    Ok(NetdevKind::User(c))
}

fn inet(key: &str, v: &str) -> Result<StreamAddr, String> {
    let (host, port) = v.rsplit_once(':').ok_or_else(|| format!("{key}={v}: expected HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("{key}={v}: not a port number"))?;
    // An empty host listens on every address, as QEMU's.
    let host = if host.is_empty() { "0.0.0.0".to_string() } else { host.to_string() };
    Ok(StreamAddr::Inet { host, port })
}

fn stream(o: &Opts) -> Result<NetdevKind, String> {
    if let Some(k) =
        o.unknown_key(&["type", "id", "server", "addr.type", "addr.host", "addr.port", "addr.path", "addr.abstract"])
    {
        return Err(format!("unknown or unsupported property '{k}' for -netdev stream"));
    }
    let server = o.get_bool("server")?.unwrap_or(false);
    let addr = match o.get("addr.type") {
        Some("inet") => {
            let host = o.get("addr.host").unwrap_or("0.0.0.0").to_string();
            let port = o.get("addr.port").ok_or("addr.type=inet needs addr.port")?;
            let port = port.parse().map_err(|_| format!("addr.port={port}: not a port number"))?;
            StreamAddr::Inet { host, port }
        }
        Some("unix") => StreamAddr::Unix(o.get("addr.path").ok_or("addr.type=unix needs addr.path")?.into()),
        Some(t) => return Err(format!("addr.type={t}: quern's stream takes inet or unix")),
        None => return Err("-netdev stream needs addr.type=inet|unix and its address".into()),
    };
    Ok(NetdevKind::Stream { server, addr })
}

fn socket(o: &Opts) -> Result<NetdevKind, String> {
    if let Some(k) = o.unknown_key(&["type", "id", "listen", "connect"]) {
        let hint = if matches!(k, "mcast" | "udp" | "localaddr" | "fd") { " (quern's socket is TCP only)" } else { "" };
        return Err(format!("unknown or unsupported property '{k}' for -netdev socket{hint}"));
    }
    match (o.get("listen"), o.get("connect")) {
        (Some(l), None) => Ok(NetdevKind::Stream { server: true, addr: inet("listen", l)? }),
        (None, Some(c)) => Ok(NetdevKind::Stream { server: false, addr: inet("connect", c)? }),
        _ => Err("-netdev socket needs exactly one of listen=HOST:PORT and connect=HOST:PORT".into()),
    }
}

fn tap(o: &Opts) -> Result<NetdevKind, String> {
    if let Some(k) = o.unknown_key(&["type", "id", "ifname", "script", "downscript", "vnet_hdr"]) {
        return Err(format!("unknown or unsupported property '{k}' for -netdev tap"));
    }
    for key in ["script", "downscript"] {
        match o.get(key) {
            None | Some("no") | Some("") => {}
            Some(v) => {
                return Err(format!(
                    "{key}={v}: quern runs no network scripts; configure the interface yourself and give {key}=no"
                ))
            }
        }
    }
    Ok(NetdevKind::Tap(quern_net::tap::TapConfig {
        ifname: o.get("ifname").map(str::to_string),
        vnet_hdr: o.get_bool("vnet_hdr")?.unwrap_or(false),
    }))
}

/// A backend from its options (`type` first); `id` as given.
fn backend(o: &Opts, id: String) -> Result<Netdev, String> {
    let ty = o.get("type").ok_or("name a backend type: user, stream, socket or tap")?;
    let kind = match ty {
        "user" => {
            if let Some(k) = o.unknown_key(USER_KEYS) {
                return Err(format!("unknown or unsupported property '{k}' for -netdev user"));
            }
            user(o)?
        }
        "stream" => stream(o)?,
        "socket" => socket(o)?,
        "tap" => tap(o)?,
        "bridge" | "hubport" | "vde" | "l2tpv3" | "vhost-user" | "vhost-vdpa" | "dgram" | "af-xdp" | "passt" => {
            return Err(format!("backend type '{ty}' is not supported yet (quern has user, stream, socket and tap)"))
        }
        t => return Err(format!("'{t}' is not a network backend type (user, stream, socket or tap)")),
    };
    Ok(Netdev { id, kind })
}

fn card_model(model: Option<&str>) -> Result<(), String> {
    match model {
        None => Ok(()),
        Some(m) if MODELS.contains(&m) => Ok(()),
        Some("help" | "?") => Err(format!("Available NIC models:\n{}", MODELS.join("\n"))),
        Some(m) => Err(format!("model={m}: not supported yet (quern has {})", MODELS.join(", "))),
    }
}

fn pci_addr(v: Option<&str>) -> Result<Option<u8>, String> {
    let Some(v) = v else { return Ok(None) };
    let dev = v.split_once('.').map_or(v, |(d, f)| if f == "0" { d } else { "bad" });
    u8::from_str_radix(dev.trim_start_matches("0x"), 16)
        .ok()
        .filter(|d| *d < 32)
        .map(Some)
        .ok_or_else(|| format!("addr={v}: expected a PCI slot 0-1f (function 0)"))
}

impl Net {
    /// `-netdev TYPE,id=ID,...`.
    pub fn netdev(&mut self, s: &str) -> Result<(), String> {
        self.given = true;
        let o = Opts::parse(s, Some("type"))?;
        let id = o.get("id").ok_or("-netdev needs id=")?.to_string();
        if self.netdevs.iter().any(|n| n.id == id) {
            return Err(format!("id={id}: a netdev of that name already exists"));
        }
        self.netdevs.push(backend(&o, id)?);
        Ok(())
    }

    /// `-nic none` or `-nic TYPE[,backend options][,model=][,mac=]`.
    pub fn nic(&mut self, s: &str) -> Result<(), String> {
        self.given = true;
        let mut o = Opts::parse(s, Some("type"))?;
        if o.get("type") == Some("none") {
            return Ok(());
        }
        card_model(o.get("model"))?;
        let mac = o.get("mac").map(parse_mac).transpose()?;
        let id = format!("__quern.nic{}", self.nics.len());
        o = o.without(&["model", "mac"]);
        self.netdevs.push(backend(&o, id.clone())?);
        self.nics.push(NicSpec { mac, netdev: Some(id), addr: None, romfile: None, id: None, implicit: false });
        Ok(())
    }

    /// `-net nic,...`, `-net TYPE,...` or `-net none`.
    pub fn net(&mut self, s: &str) -> Result<(), String> {
        self.given = true;
        let o = Opts::parse(s, Some("type"))?;
        match o.get("type") {
            Some("none") => Ok(()),
            Some("nic") => {
                if let Some(k) = o.unknown_key(&["type", "model", "macaddr", "addr", "name", "netdev", "vectors"]) {
                    return Err(format!("unknown or unsupported property '{k}' for -net nic"));
                }
                card_model(o.get("model"))?;
                let mac = o.get("macaddr").map(parse_mac).transpose()?;
                let nic = NicSpec {
                    mac,
                    netdev: o.get("netdev").map(str::to_string),
                    addr: pci_addr(o.get("addr"))?,
                    romfile: None,
                    id: o.get("name").map(str::to_string),
                    implicit: false,
                };
                self.hub_nics.push(nic);
                Ok(())
            }
            _ => {
                let id = o.get("id").or(o.get("name")).map_or_else(|| "__quern.hub0".to_string(), str::to_string);
                let o = o.without(&["name"]);
                self.hub_backends.push(backend(&o, id)?);
                Ok(())
            }
        }
    }

    /// `-device e1000,...`.
    pub fn device(&mut self, o: &Opts) -> Result<(), String> {
        if let Some(k) = o.unknown_key(&["driver", "netdev", "mac", "addr", "bus", "romfile", "id", "bootindex"]) {
            return Err(format!("unknown or unsupported property '{k}' for e1000"));
        }
        if let Some(b) = o.get("bus").filter(|b| *b != "pci.0") {
            return Err(format!("bus={b}: quern has one PCI bus, pci.0"));
        }
        self.nics.push(NicSpec {
            mac: o.get("mac").map(parse_mac).transpose()?,
            netdev: o.get("netdev").map(str::to_string),
            addr: pci_addr(o.get("addr"))?,
            romfile: o.get("romfile").map(PathBuf::from),
            id: o.get("id").map(str::to_string),
            implicit: false,
        });
        Ok(())
    }

    /// The backends and the cards, each card with its MAC and its backend's id checked;
    /// every netdev serves at most one card. `default_net`: QEMU's default network (a
    /// card on a user-mode network), for when no network option was given.
    pub fn finish(mut self, default_net: bool) -> Result<(Vec<Netdev>, Vec<NicSpec>), String> {
        if default_net && !self.given {
            self.hub_nics.push(NicSpec {
                mac: None,
                netdev: None,
                addr: None,
                romfile: None,
                id: None,
                implicit: true,
            });
            self.hub_backends
                .push(Netdev { id: "__quern.hub0".into(), kind: NetdevKind::User(SlirpConfig::default()) });
        }
        match (self.hub_nics.len(), self.hub_backends.len()) {
            (0, 0) => {}
            (n, b) if n > 1 || b > 1 => {
                return Err(format!(
                    "-net: {n} cards and {b} backends on one hub: quern connects one card to one backend; use \
                     -netdev with -device (or -nic) for more"
                ))
            }
            (_, _) => {
                let backend = self.hub_backends.pop();
                if let Some(mut nic) = self.hub_nics.pop() {
                    if nic.netdev.is_none() {
                        nic.netdev = backend.as_ref().map(|b| b.id.clone());
                    }
                    self.nics.push(nic);
                } else if let Some(b) = &backend {
                    log::warn!("-net {}: no -net nic uses this backend", b.id);
                }
                self.netdevs.extend(backend);
            }
        }
        let mut used = Vec::new();
        for (i, nic) in self.nics.iter_mut().enumerate() {
            if let Some(id) = &nic.netdev {
                if !self.netdevs.iter().any(|n| &n.id == id) {
                    return Err(format!("netdev={id}: no -netdev with that id"));
                }
                if used.contains(id) {
                    return Err(format!("netdev={id}: already used by another card"));
                }
                used.push(id.clone());
            }
            let mut mac = DEFAULT_MAC;
            mac[5] = mac[5].wrapping_add(i as u8);
            nic.mac.get_or_insert(mac);
        }
        for n in &self.netdevs {
            if !used.contains(&n.id) {
                log::warn!("-netdev id={}: no card uses it", n.id);
            }
        }
        self.netdevs.retain(|n| used.contains(&n.id));
        Ok((self.netdevs, self.nics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(setup: impl FnOnce(&mut Net) -> Result<(), String>) -> Result<(Vec<Netdev>, Vec<NicSpec>), String> {
        let mut n = Net::default();
        setup(&mut n)?;
        n.finish(false)
    }

    #[test]
    fn netdev_and_device() {
        let (nd, nics) = finish(|n| {
            n.netdev("user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5555-10.0.2.15:53,restrict=on")?;
            n.device(&Opts::parse("driver=e1000,netdev=n0,mac=52:54:00:aa:bb:cc,addr=5", None)?)
        })
        .unwrap();
        let NetdevKind::User(c) = &nd[0].kind else { panic!() };
        assert!(c.restrict);
        assert_eq!(c.hostfwd.len(), 2);
        assert_eq!(c.hostfwd[0].host_addr, Ipv4Addr::LOCALHOST);
        assert_eq!((c.hostfwd[0].host_port, c.hostfwd[0].guest_addr, c.hostfwd[0].guest_port), (2222, None, 22));
        assert!(c.hostfwd[1].udp && c.hostfwd[1].guest_addr == Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(nics[0].mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(nics[0].addr, Some(5));
    }

    #[test]
    fn net_follows_the_network_given() {
        let (nd, _) = finish(|n| {
            n.nic("user,net=192.168.76.0/24,tftp=/,bootfile=pxelinux.0,model=e1000")?;
            Ok(())
        })
        .unwrap();
        let NetdevKind::User(c) = &nd[0].kind else { panic!() };
        assert_eq!(
            (c.host, c.dns, c.dhcp_start),
            ("192.168.76.2".parse().unwrap(), "192.168.76.3".parse().unwrap(), "192.168.76.15".parse().unwrap())
        );
        assert_eq!(c.bootfile.as_deref(), Some("pxelinux.0"));
    }

    #[test]
    fn legacy_net_pairs_the_card_with_the_backend() {
        let (nd, nics) = finish(|n| {
            n.net("nic,model=e1000,macaddr=52:54:00:12:34:99")?;
            n.net("user")
        })
        .unwrap();
        assert_eq!(nics[0].netdev.as_deref(), Some(nd[0].id.as_str()));
        assert_eq!(nics[0].mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x99]));
        let n = Net::default();
        assert_eq!(n.finish(true).unwrap().1.len(), 1, "QEMU's default network");
    }

    #[test]
    fn bad_network_options_are_clear_errors() {
        let cases: &[(&str, &str)] = &[
            ("netdev", "user,id=a,frobnicate=1"),
            ("netdev", "user"),
            ("netdev", "user,id=a,hostfwd=tcp:127.0.0.1:x-:22"),
            ("netdev", "user,id=a,hostfwd=sctp::1-:2"),
            ("netdev", "user,id=a,host=192.168.0.2"),
            ("netdev", "user,id=a,net=10.0.0.0/31"),
            ("netdev", "user,id=a,guestfwd=tcp:10.0.2.100:80-chardev"),
            ("netdev", "bridge,id=a,br=br0"),
            ("netdev", "tap,id=a,script=/etc/qemu-ifup"),
            ("netdev", "socket,id=a,mcast=230.0.0.1:1234"),
            ("netdev", "socket,id=a"),
            ("netdev", "stream,id=a,addr.type=inet"),
            ("netdev", "warp,id=a"),
            ("nic", "user,model=virtio-net-pci"),
            ("nic", "user,mac=01:00:00:00:00:01"),
            ("nic", "user,mac=52:54:00"),
            ("net", "nic,model=rtl8139"),
        ];
        for (opt, v) in cases {
            let mut n = Net::default();
            let r = match *opt {
                "netdev" => n.netdev(v),
                "nic" => n.nic(v),
                _ => n.net(v),
            };
            assert!(r.is_err(), "-{opt} {v} was accepted");
        }
        assert!(finish(|n| n.device(&Opts::parse("driver=e1000,netdev=nope", None)?))
            .unwrap_err()
            .contains("no -netdev"));
        assert!(finish(|n| {
            n.netdev("user,id=a")?;
            n.device(&Opts::parse("driver=e1000,netdev=a", None)?)?;
            n.device(&Opts::parse("driver=e1000,netdev=a", None)?)
        })
        .unwrap_err()
        .contains("already used"));
    }
}
