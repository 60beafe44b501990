//! Drives as QEMU's command line describes them: `-hda`..`-hdd`, `-cdrom`, `-drive`,
//! `-blockdev` nodes and `-device ide-hd|ide-cd`, resolved to IDE slots (bus, unit)
//! the way QEMU assigns them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::opts::{parse_bool, Opts};

pub use quern_machine_pc::config::Media;

/// One IDE drive, as the command line asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveSpec {
    /// The image; `None` for a CD-ROM drive without a disc.
    pub file: Option<PathBuf>,
    /// `raw` or `qcow2`; `None` to probe as QEMU does.
    pub format: Option<String>,
    pub media: Media,
    pub bus: u8,
    pub unit: u8,
    pub read_only: bool,
    pub snapshot: bool,
    /// `writeback` (QEMU's default), `none`, `writethrough`, `directsync`, `unsafe`.
    pub cache: String,
    pub locking: bool,
    pub bootindex: Option<u32>,
    /// QEMU's name for it (ide0-hd0, ide1-cd0) or the `id=` given.
    pub id: String,
    /// The option that asked for the image ("-cdrom os.iso"), for error messages.
    pub origin: String,
    /// The `-device`'s `id=` (the monitor's `qdev`).
    pub qdev: Option<String>,
    /// The `-blockdev` format node's name.
    pub node_name: Option<String>,
}

/// A `-drive if=none` or `-blockdev` node waiting for a `-device` to use it.
#[derive(Clone, Debug)]
struct Backend {
    id: String,
    origin: String,
    file: Option<PathBuf>,
    format: Option<String>,
    media: Option<Media>,
    read_only: bool,
    snapshot: bool,
    cache: String,
    locking: bool,
    /// Made by `-blockdev` (`id` is its node name).
    node: bool,
}

/// An IDE slot: (bus, unit).
type Slot = (u8, u8);

/// A drive bound for the controller: its slot (`None`: the next free one), its medium
/// and boot priority.
struct Placed {
    slot: Option<Slot>,
    backend: Backend,
    bootindex: Option<u32>,
    qdev: Option<String>,
}

/// A `-device ide-hd|ide-cd`, before its `drive=` is resolved.
struct IdeDevice {
    media: Media,
    drive: Option<String>,
    slot: Option<Slot>,
    bootindex: Option<u32>,
    id: Option<String>,
}

/// Collects drive options in command-line order; [`Drives::finish`] resolves them.
#[derive(Default)]
pub struct Drives {
    /// Drives with a slot (if=ide, -hda, ...).
    placed: Vec<Placed>,
    /// Named backends (-drive if=none, -blockdev format nodes).
    named: Vec<Backend>,
    /// -blockdev protocol nodes: node-name → filename.
    files: Vec<(String, PathBuf, bool)>,
    devices: Vec<IdeDevice>,
    pub snapshot_all: bool,
}

const CACHE_MODES: [&str; 5] = ["writeback", "none", "writethrough", "directsync", "unsafe"];

fn slot_of_index(index: u32) -> Result<Slot, String> {
    if index >= 4 {
        return Err(format!("index={index}: the IDE controller has four drives, index 0-3"));
    }
    Ok(((index / 2) as u8, (index % 2) as u8))
}

/// A path from an option value, kept as bytes (paths need not be UTF-8).
fn path_of(v: &str) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(v.as_bytes()))
}

impl Drives {
    /// `-hda`..`-hdd` and `-cdrom`: a file at a fixed index.
    pub fn legacy(&mut self, index: u32, media: Media, file: PathBuf) {
        let slot = slot_of_index(index).ok();
        let opt = match media {
            Media::Cdrom => "-cdrom".to_string(),
            Media::Disk => format!("-hd{}", (b'a' + index as u8) as char),
        };
        let b = Backend {
            id: String::new(),
            origin: format!("{opt} {}", file.display()),
            file: Some(file),
            format: None,
            media: Some(media),
            read_only: media == Media::Cdrom,
            snapshot: false,
            cache: "writeback".into(),
            locking: true,
            node: false,
        };
        self.placed.push(Placed { slot, backend: b, bootindex: None, qdev: None });
    }

    /// `-drive file=...,format=...,if=ide|none,index=,bus=,unit=,media=,readonly=,
    /// cache=,snapshot=,id=,file.locking=`.
    pub fn drive(&mut self, o: &Opts) -> Result<(), String> {
        const KEYS: &[&str] = &[
            "file",
            "format",
            "if",
            "index",
            "bus",
            "unit",
            "media",
            "readonly",
            "read-only",
            "cache",
            "snapshot",
            "id",
            "file.locking",
            "locking",
            "aio",
            "discard",
            "detect-zeroes",
            "werror",
            "rerror",
            "cache.direct",
            "cache.no-flush",
            "auto-read-only",
        ];
        if let Some(k) = o.unknown_key(KEYS) {
            return Err(format!("unknown property '{k}' (see QEMU's -drive documentation)"));
        }
        let media = match o.get("media") {
            None | Some("disk") => Media::Disk,
            Some("cdrom") => Media::Cdrom,
            Some(m) => return Err(format!("media={m}: expected disk or cdrom")),
        };
        let mut b = backend_opts(o, media)?;
        b.file = o.get("file").filter(|f| !f.is_empty()).map(path_of);
        if b.file.is_none() && media == Media::Disk {
            return Err("a disk needs file=IMAGE (only a CD-ROM drive may be empty)".into());
        }
        b.id = o.get("id").unwrap_or("").to_string();
        b.origin = format!(
            "-drive {}",
            o.keys().map(|k| format!("{k}={}", o.get(k).unwrap_or(""))).collect::<Vec<_>>().join(",")
        );
        let num = |k: &str| -> Result<Option<u32>, String> {
            o.get(k).map(|v| v.parse().map_err(|_| format!("{k}={v}: give a number"))).transpose()
        };
        match o.get("if").unwrap_or("ide") {
            "ide" => {
                let slot = match (num("index")?, num("bus")?, num("unit")?) {
                    (Some(i), None, None) => Some(slot_of_index(i)?),
                    (None, None, None) => None,
                    (None, bus, unit) => {
                        let (bus, unit) = (bus.unwrap_or(0), unit.unwrap_or(0));
                        if bus > 1 || unit > 1 {
                            return Err(format!("bus={bus},unit={unit}: IDE has buses 0-1 with units 0-1"));
                        }
                        Some((bus as u8, unit as u8))
                    }
                    (Some(_), _, _) => return Err("give index= or bus=/unit=, not both".into()),
                };
                self.placed.push(Placed { slot, backend: b, bootindex: None, qdev: None });
            }
            "none" => {
                if b.id.is_empty() {
                    return Err("if=none needs id=NAME for -device ...,drive=NAME".into());
                }
                self.named.push(b);
            }
            i @ ("floppy" | "scsi" | "sd" | "mtd" | "pflash" | "virtio" | "xen") => {
                return Err(format!("if={i} is not supported yet (use if=ide)"))
            }
            i => return Err(format!("if={i}: unknown interface")),
        }
        Ok(())
    }

    /// `-blockdev`: protocol nodes (`driver=file`) and format nodes (`driver=raw|qcow2`
    /// with `file=NODE`), as libvirt generates them.
    pub fn blockdev(&mut self, o: &Opts) -> Result<(), String> {
        let node = o.get("node-name").ok_or("node-name= is required")?.to_string();
        let allowed_common = [
            "driver",
            "node-name",
            "read-only",
            "auto-read-only",
            "discard",
            "cache.direct",
            "cache.no-flush",
            "detect-zeroes",
        ];
        match o.get("driver").ok_or("driver= is required")? {
            "file" | "host_device" | "host_cdrom" => {
                let mut allowed = allowed_common.to_vec();
                allowed.extend(["filename", "locking", "aio"]);
                if let Some(k) = o.unknown_key(&allowed) {
                    return Err(format!("unknown property '{k}' for driver file"));
                }
                let file = o.get("filename").ok_or("driver=file needs filename=")?;
                let locking = o.get("locking").map(|v| v != "off").unwrap_or(true);
                self.files.push((node, path_of(file), locking));
            }
            fmt @ ("raw" | "qcow2") => {
                let mut allowed = allowed_common.to_vec();
                allowed.push("file");
                if let Some(k) = o.unknown_key(&allowed) {
                    return Err(format!("unknown property '{k}' for driver {fmt}"));
                }
                let file_node = o.get("file").ok_or("a format node needs file=NODE")?;
                let Some((_, path, locking)) = self.files.iter().find(|(n, _, _)| n == file_node) else {
                    return Err(format!(
                        "file={file_node}: no -blockdev node of that name (give the driver=file node first)"
                    ));
                };
                let mut b = backend_opts(o, Media::Disk)?;
                b.media = None;
                b.origin = format!("-blockdev node-name={node}");
                b.node = true;
                (b.id, b.file, b.format, b.locking) = (node, Some(path.clone()), Some(fmt.into()), *locking);
                self.named.push(b);
            }
            d => return Err(format!("driver={d} is not supported yet (file, raw and qcow2 are)")),
        }
        Ok(())
    }

    /// `-device ide-hd|ide-cd|ide-drive,drive=ID,bus=ide.N,unit=M,bootindex=K`.
    pub fn device(&mut self, media: Media, o: &Opts) -> Result<(), String> {
        const KEYS: &[&str] =
            &["driver", "drive", "bus", "unit", "bootindex", "id", "serial", "model", "wwn", "ver", "write-cache"];
        if let Some(k) = o.unknown_key(KEYS) {
            return Err(format!("unknown property '{k}'"));
        }
        let bus = match o.get("bus") {
            None => None,
            Some(b) => Some(match b.strip_prefix("ide.").and_then(|n| n.parse::<u8>().ok()) {
                Some(n @ 0..=1) => n,
                _ => return Err(format!("bus={b}: the IDE buses are ide.0 and ide.1")),
            }),
        };
        let unit = o
            .get("unit")
            .map(|u| u.parse::<u8>().ok().filter(|u| *u <= 1).ok_or(format!("unit={u}: 0 or 1")))
            .transpose()?;
        let slot = match (bus, unit) {
            (None, None) => None,
            (b, u) => Some((b.unwrap_or(0), u.unwrap_or(0))),
        };
        let bootindex = o
            .get("bootindex")
            .map(|v| v.parse::<u32>().map_err(|_| format!("bootindex={v}: give a number")))
            .transpose()?;
        if media == Media::Disk && o.get("drive").is_none() {
            return Err("ide-hd needs drive=ID".into());
        }
        let (drive, id) = (o.get("drive").map(str::to_string), o.get("id").map(str::to_string));
        self.devices.push(IdeDevice { media, drive, slot, bootindex, id });
        Ok(())
    }

    /// Assigns slots as QEMU does (explicit ones first, then the next free index) and
    /// checks that no slot is used twice and every `drive=` names a backend.
    pub fn finish(mut self) -> Result<Vec<DriveSpec>, String> {
        let mut placed = std::mem::take(&mut self.placed);
        for IdeDevice { media, drive, slot, bootindex, id: qdev } in std::mem::take(&mut self.devices) {
            let b = match drive {
                Some(id) => {
                    let i = self.named.iter().position(|b| b.id == id).ok_or_else(|| {
                        format!(
                            "drive={id}: no -drive if=none,id={id} or -blockdev node-name={id} (or it is used twice)"
                        )
                    })?;
                    let mut b = self.named.remove(i);
                    b.media = Some(media);
                    if media == Media::Cdrom {
                        b.read_only = true;
                    }
                    b
                }
                None => Backend {
                    id: String::new(),
                    origin: "-device ide-cd".into(),
                    file: None,
                    format: None,
                    media: Some(Media::Cdrom),
                    read_only: true,
                    snapshot: false,
                    cache: "writeback".into(),
                    locking: true,
                    node: false,
                },
            };
            placed.push(Placed { slot, backend: b, bootindex, qdev });
        }
        let mut used: Vec<Slot> = Vec::new();
        for p in &placed {
            if let Some(s) = &p.slot {
                if used.contains(s) {
                    return Err(format!("two drives on IDE bus {} unit {}", s.0, s.1));
                }
                used.push(*s);
            }
        }
        let mut out = Vec::new();
        for Placed { slot, backend: b, bootindex, qdev } in placed {
            let (bus, unit) = match slot {
                Some(s) => s,
                None => {
                    let free = (0..4).map(|i| ((i / 2) as u8, (i % 2) as u8)).find(|s| !used.contains(s));
                    let s = free.ok_or("more than four IDE drives")?;
                    used.push(s);
                    s
                }
            };
            let media = b.media.unwrap_or(Media::Disk);
            let node_name = b.node.then(|| b.id.clone());
            let id = if b.id.is_empty() {
                format!("ide{bus}-{}{unit}", if media == Media::Cdrom { "cd" } else { "hd" })
            } else {
                b.id
            };
            out.push(DriveSpec {
                file: b.file,
                format: b.format,
                media,
                bus,
                unit,
                read_only: b.read_only,
                snapshot: b.snapshot || self.snapshot_all,
                cache: b.cache,
                locking: b.locking,
                bootindex,
                id,
                origin: b.origin,
                qdev,
                node_name,
            });
        }
        out.sort_by_key(|d| (d.bus, d.unit));
        Ok(out)
    }
}

/// The options `-drive` and format nodes share.
fn backend_opts(o: &Opts, media: Media) -> Result<Backend, String> {
    let format = match o.get("format") {
        None => None,
        Some(f @ ("raw" | "qcow2")) => Some(f.to_string()),
        Some(f @ ("vmdk" | "vdi" | "vhdx" | "vpc" | "qed" | "luks" | "dmg" | "parallels" | "bochs" | "cloop")) => {
            return Err(format!("format={f} is not supported yet (raw and qcow2 are; qemu-img convert can make one)"))
        }
        Some(f) => return Err(format!("format={f}: unknown image format")),
    };
    let flag = |keys: &[&str]| -> Result<bool, String> {
        for k in keys {
            if let Some(v) = o.get(k) {
                return parse_bool(v).ok_or_else(|| format!("{k}={v}: expected on or off"));
            }
        }
        Ok(false)
    };
    let cache = o.get("cache").unwrap_or("writeback");
    if !CACHE_MODES.contains(&cache) {
        return Err(format!("cache={cache}: expected one of {}", CACHE_MODES.join(", ")));
    }
    let locking = match o.get("file.locking").or(o.get("locking")) {
        None | Some("auto") => true,
        Some(v) => parse_bool(v).ok_or_else(|| format!("locking={v}: expected on, off or auto"))?,
    };
    Ok(Backend {
        id: String::new(),
        origin: String::new(),
        file: None,
        format,
        media: Some(media),
        read_only: flag(&["readonly", "read-only"])? || media == Media::Cdrom,
        snapshot: flag(&["snapshot"])?,
        cache: cache.to_string(),
        locking,
        node: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(d: &mut Drives, s: &str) -> Result<(), String> {
        d.drive(&Opts::parse(s, None).unwrap())
    }

    #[test]
    fn legacy_options_take_qemus_slots() {
        let mut d = Drives::default();
        d.legacy(0, Media::Disk, "a.img".into());
        d.legacy(2, Media::Cdrom, "c.iso".into());
        let v = d.finish().unwrap();
        assert_eq!((v[0].bus, v[0].unit, v[0].media, v[0].id.as_str()), (0, 0, Media::Disk, "ide0-hd0"));
        assert_eq!((v[1].bus, v[1].unit, v[1].media, v[1].read_only), (1, 0, Media::Cdrom, true));
    }

    #[test]
    fn drive_options_and_next_free_slot() {
        let mut d = Drives::default();
        d.legacy(0, Media::Disk, "a.img".into());
        drive(&mut d, "file=b.qcow2,format=qcow2,cache=none,snapshot=on").unwrap();
        drive(&mut d, "file=c.iso,media=cdrom,index=3").unwrap();
        let v = d.finish().unwrap();
        assert_eq!(
            (v[1].bus, v[1].unit, v[1].format.as_deref(), v[1].cache.as_str(), v[1].snapshot),
            (0, 1, Some("qcow2"), "none", true)
        );
        assert_eq!((v[2].bus, v[2].unit), (1, 1));
        let mut d = Drives::default();
        d.legacy(0, Media::Disk, "a.img".into());
        drive(&mut d, "file=b.img,index=0").unwrap();
        assert!(d.finish().unwrap_err().contains("two drives"));
        let mut d = Drives::default();
        for bad in [
            "file=x,frob=1",
            "file=x,format=vmdk",
            "file=x,format=zz",
            "file=x,cache=fast",
            "file=x,if=virtio",
            "format=raw",
            "file=x,index=7",
            "file=x,if=none",
        ] {
            assert!(drive(&mut d, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn libvirt_blockdev_and_device() {
        let mut d = Drives::default();
        d.blockdev(&Opts::parse(r#"{"driver":"file","filename":"/v/d.img","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}"#, None).unwrap()).unwrap();
        d.blockdev(
            &Opts::parse(
                r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}"#,
                None,
            )
            .unwrap(),
        )
        .unwrap();
        d.device(
            Media::Disk,
            &Opts::parse("ide-hd,bus=ide.0,unit=0,drive=libvirt-1-format,id=ide0-0-0,bootindex=1", Some("driver"))
                .unwrap(),
        )
        .unwrap();
        d.device(Media::Cdrom, &Opts::parse("ide-cd,bus=ide.1,unit=0", Some("driver")).unwrap()).unwrap();
        let v = d.finish().unwrap();
        assert_eq!(v[0].file.as_deref(), Some(std::path::Path::new("/v/d.img")));
        assert_eq!(
            (v[0].format.as_deref(), v[0].bootindex, v[0].id.as_str()),
            (Some("raw"), Some(1), "libvirt-1-format")
        );
        assert_eq!((v[1].media, v[1].file.as_ref()), (Media::Cdrom, None));
        let mut d = Drives::default();
        d.device(Media::Disk, &Opts::parse("ide-hd,drive=nope", Some("driver")).unwrap()).unwrap();
        assert!(d.finish().unwrap_err().contains("drive=nope"));
        let mut d = Drives::default();
        assert!(d.blockdev(&Opts::parse(r#"{"driver":"raw","file":"x","node-name":"n"}"#, None).unwrap()).is_err());
        assert!(d.device(Media::Disk, &Opts::parse("ide-hd,drive=x,bus=ide.2", Some("driver")).unwrap()).is_err());
    }
}
