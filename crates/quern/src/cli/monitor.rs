//! The monitor options: `-qmp unix:PATH,server=on,wait=off` and `-qmp
//! tcp:HOST:PORT,...`; `-chardev socket,id=ID,path=|host=,port=|fd=N,server=on,wait=off`
//! with `-mon chardev=ID,mode=control` (libvirt's form, its socket passed as `fd=`).
//! Only listening sockets that do not wait for a client are built; the human monitor,
//! other chardev backends and `wait=on` are refused by name.

use std::path::PathBuf;

use quern_monitor::server::Endpoint;

use super::opts::Opts;

#[derive(Default)]
pub struct Monitors {
    chardevs: Vec<(String, Endpoint)>,
    /// `-chardev pty` ids and their `logfile=` (path, `logappend=`), for the serial port.
    ptys: Vec<(String, Option<(PathBuf, bool)>)>,
    /// Endpoints from `-qmp`, and chardev ids from `-mon`.
    qmp: Vec<Endpoint>,
    mons: Vec<String>,
}

/// `server=on` (or bare `server`) is required; `wait=off` (or `nowait`) too.
fn check_server(o: &Opts) -> Result<(), String> {
    if o.get_bool("server")? != Some(true) {
        return Err("only a listening socket is supported: add server=on,wait=off".into());
    }
    if o.get_bool("wait")? != Some(false) && o.get_bool("nowait")? != Some(true) {
        return Err("wait=on (waiting for a client before the guest starts) is not supported yet: add wait=off".into());
    }
    Ok(())
}

impl Monitors {
    /// `-qmp ADDR[,server=on,wait=off]`.
    pub fn qmp(&mut self, v: &str) -> Result<(), String> {
        let o = Opts::parse(v, Some("addr"))?;
        if let Some(k) = o.unknown_key(&["addr", "server", "wait", "nowait"]) {
            return Err(format!("unknown property '{k}' for -qmp"));
        }
        let addr = o.get("addr").unwrap_or_default();
        let endpoint = if let Some(p) = addr.strip_prefix("unix:") {
            Endpoint::Unix(p.into())
        } else if let Some(hp) = addr.strip_prefix("tcp:") {
            let (host, port) = hp.rsplit_once(':').ok_or("tcp: needs HOST:PORT")?;
            let port = port.parse().map_err(|_| format!("tcp:{hp}: not a port number"))?;
            Endpoint::Tcp { host: if host.is_empty() { "0.0.0.0".into() } else { host.into() }, port }
        } else if addr == "stdio" {
            return Err("a QMP monitor on stdio is not supported yet: use unix:PATH or tcp:HOST:PORT".into());
        } else {
            return Err(format!("'{addr}': give unix:PATH or tcp:HOST:PORT"));
        };
        check_server(&o)?;
        self.qmp.push(endpoint);
        Ok(())
    }

    /// `-chardev socket,...`.
    pub fn chardev(&mut self, v: &str) -> Result<(), String> {
        let o = Opts::parse(v, Some("backend"))?;
        let backend = o.get("backend").unwrap_or_default();
        if backend == "pty" {
            if let Some(k) = o.unknown_key(&["backend", "id", "logfile", "logappend"]) {
                return Err(format!("unknown or unsupported property '{k}' for -chardev pty"));
            }
            let id = o.get("id").ok_or("-chardev needs id=")?.to_string();
            if self.ptys.iter().any(|(i, _)| *i == id) || self.chardevs.iter().any(|(i, _)| *i == id) {
                return Err(format!("id={id}: a chardev of that name already exists"));
            }
            let append = match o.get("logappend") {
                None | Some("off") => false,
                Some("on") => true,
                Some(v) => return Err(format!("logappend={v}: expected on or off")),
            };
            self.ptys.push((id, o.get("logfile").map(|f| (PathBuf::from(f), append))));
            return Ok(());
        }
        if backend != "socket" {
            return Err(format!(
                "-chardev {backend} is not supported yet (quern has socket chardevs for monitors and pty for the \
                 serial port; -serial and -debugcon take stdio, none, pty or file:PATH)"
            ));
        }
        if let Some(k) =
            o.unknown_key(&["backend", "id", "path", "host", "port", "fd", "server", "wait", "nowait", "ipv4"])
        {
            return Err(format!("unknown or unsupported property '{k}' for -chardev socket"));
        }
        let id = o.get("id").ok_or("-chardev needs id=")?.to_string();
        if self.chardevs.iter().any(|(i, _)| *i == id) {
            return Err(format!("id={id}: a chardev of that name already exists"));
        }
        check_server(&o)?;
        let endpoint = match (o.get("path"), o.get("port"), o.get("fd")) {
            (Some(p), None, None) => Endpoint::Unix(p.into()),
            (None, Some(port), None) => Endpoint::Tcp {
                host: o.get("host").unwrap_or("0.0.0.0").to_string(),
                port: port.parse().map_err(|_| format!("port={port}: not a port number"))?,
            },
            (None, None, Some(fd)) => Endpoint::Fd(fd.parse().map_err(|_| format!("fd={fd}: not a number"))?),
            _ => return Err("give exactly one of path=, port= (with host=) and fd=".into()),
        };
        self.chardevs.push((id, endpoint));
        Ok(())
    }

    /// `-mon chardev=ID,mode=control`.
    pub fn mon(&mut self, v: &str) -> Result<(), String> {
        let o = Opts::parse(v, Some("chardev"))?;
        if let Some(k) = o.unknown_key(&["chardev", "mode", "id", "pretty"]) {
            return Err(format!("unknown property '{k}' for -mon"));
        }
        match o.get("mode").unwrap_or("readline") {
            "control" => {}
            "readline" => return Err("the human monitor (mode=readline) is not supported yet: use mode=control".into()),
            m => return Err(format!("mode={m}: give control")),
        }
        self.mons.push(o.get("chardev").ok_or("-mon needs chardev=")?.to_string());
        Ok(())
    }

    /// Takes the chardev `id` (a pty) for the serial port; returns its log file.
    pub fn serial_chardev(&mut self, id: &str) -> Result<Option<(PathBuf, bool)>, String> {
        if let Some(i) = self.ptys.iter().position(|(p, _)| p == id) {
            return Ok(self.ptys.remove(i).1);
        }
        if self.chardevs.iter().any(|(c, _)| c == id) {
            return Err(format!("chardev={id}: a socket for the serial port is not supported yet (use a pty)"));
        }
        Err(format!("chardev={id}: no -chardev with that id"))
    }

    /// The QMP endpoints; a `-mon` naming no `-chardev` is an error, a chardev no
    /// monitor uses is one too (quern has nothing else to plug it into yet).
    pub fn finish(mut self) -> Result<Vec<Endpoint>, String> {
        for id in &self.mons {
            let Some(i) = self.chardevs.iter().position(|(c, _)| c == id) else {
                return Err(format!("-mon chardev={id}: no -chardev with that id"));
            };
            self.qmp.push(self.chardevs.remove(i).1);
        }
        if let Some((id, _)) = self.ptys.first() {
            return Err(format!("-chardev id={id}: nothing uses it (a pty goes to -device isa-serial,chardev={id})"));
        }
        if let Some((id, _)) = self.chardevs.first() {
            return Err(format!("-chardev id={id}: nothing uses it (quern connects socket chardevs to -mon only)"));
        }
        Ok(self.qmp)
    }
}
