//! The QMP commands quern answers, each a function of its arguments; anything else is
//! `CommandNotFound`. Arguments are checked as QEMU checks them: an unknown member or
//! one of the wrong type is a `GenericError` naming it.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::Monitor;

/// The QEMU version quern reports: the one whose command line and QMP it follows, so
/// that tools that gate features on it (libvirt needs at least 4.2) treat it as such.
/// quern's own version is in `package`.
pub const QEMU_VERSION: (u32, u32, u32) = (7, 2, 0);

pub fn package() -> String {
    format!(" (quern {})", env!("CARGO_PKG_VERSION"))
}

/// A QMP error: QEMU's class and a description.
#[derive(Debug)]
pub struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError { class: "GenericError", desc: desc.into() }
    }
}

type Args = Map<String, Value>;
type Handler = fn(&Arc<Monitor>, &Args) -> Result<Value, QmpError>;

/// Every command: name, the arguments it takes, handler.
const COMMANDS: &[(&str, &[&str], Handler)] = &[
    ("query-version", &[], |_, _| {
        let (major, minor, micro) = QEMU_VERSION;
        Ok(json!({ "qemu": { "major": major, "minor": minor, "micro": micro }, "package": package() }))
    }),
    ("query-status", &[], |m, _| {
        let s = m.vm.run_state();
        Ok(json!({ "status": s.name(), "running": s == crate::RunState::Running, "singlestep": false }))
    }),
    ("query-commands", &[], |_, _| {
        let mut names: Vec<Value> = COMMANDS.iter().map(|c| json!({ "name": c.0 })).collect();
        names.push(json!({ "name": "qmp_capabilities" }));
        Ok(Value::Array(names))
    }),
    ("query-target", &[], |_, _| Ok(json!({ "arch": "x86_64" }))),
    ("query-chardev", &[], |m, _| {
        let devs = m.vm.info().chardevs.into_iter();
        Ok(Value::Array(devs.map(|(l, f)| json!({ "label": l, "filename": f, "frontend-open": true })).collect()))
    }),
    ("query-kvm", &[], |m, _| {
        let i = m.vm.info();
        Ok(json!({ "enabled": i.accel == "kvm", "present": i.kvm_present }))
    }),
    ("query-name", &[], |m, _| Ok(m.vm.info().name.map_or_else(|| json!({}), |n| json!({ "name": n })))),
    ("query-uuid", &[], |m, _| Ok(json!({ "UUID": m.vm.info().uuid }))),
    ("query-machines", &[], |m, _| {
        let max = m.vm.info().max_cpus.max(64);
        Ok(json!([
            { "name": "pc-i440fx-7.2", "alias": "pc", "is-default": true, "cpu-max": max, "hotpluggable-cpus": false,
              "numa-mem-supported": false, "deprecated": false, "default-cpu-type": "qemu64-x86_64-cpu",
              "default-ram-id": "pc.ram", "acpi": true },
            { "name": "none", "cpu-max": 1, "hotpluggable-cpus": false, "numa-mem-supported": false,
              "deprecated": false, "acpi": false }
        ]))
    }),
    ("query-cpus-fast", &[], |m, _| {
        let cpus: Vec<Value> = (0..m.vm.info().cpus)
            .map(|i| {
                json!({ "cpu-index": i, "qom-path": format!("/machine/unattached/device[{i}]"),
                        "thread-id": 0, "target": "x86_64",
                        "props": { "core-id": i, "thread-id": 0, "socket-id": 0 } })
            })
            .collect();
        Ok(Value::Array(cpus))
    }),
    ("stop", &[], |m, _| {
        m.vm.stop();
        Ok(json!({}))
    }),
    ("cont", &[], |m, _| m.vm.cont().map(|()| json!({})).map_err(QmpError::generic)),
    ("system_reset", &[], |m, _| {
        m.vm.system_reset();
        Ok(json!({}))
    }),
    ("system_powerdown", &[], |m, _| {
        m.vm.system_powerdown();
        Ok(json!({}))
    }),
    ("set_link", &["name", "up"], |m, a| {
        let name = string_arg(a, "name")?;
        let up = match a.get("up") {
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(QmpError::generic("Invalid parameter type for 'up', expected: boolean")),
            None => return Err(QmpError::generic("Parameter 'up' is missing")),
        };
        m.vm.set_link(name, up).map(|()| json!({})).map_err(|e| QmpError { class: "DeviceNotFound", desc: e })
    }),
    // The session quits once this answer is out: a process ending first would lose it.
    ("quit", &[], |_, _| Ok(json!({}))),
    ("human-monitor-command", &["command-line", "cpu-index"], |m, a| {
        let line = string_arg(a, "command-line")?;
        m.vm.human(line).map(Value::String).map_err(QmpError::generic)
    }),
    // What libvirt's probe asks and quern has nothing to list for yet.
    ("query-qmp-schema", &[], |_, _| Ok(json!([]))),
    ("query-command-line-options", &["option"], |_, _| Ok(json!([]))),
    ("query-migrate-capabilities", &[], |m, _| Ok(m.migration.capabilities())),
    ("migrate-set-capabilities", &["capabilities"], |m, a| {
        m.migration.set_capabilities(a.get("capabilities").unwrap_or(&Value::Null)).map(|()| json!({}))
    }),
    // Bandwidth and downtime limits mean nothing to a save that stops the guest.
    (
        "migrate-set-parameters",
        &["max-bandwidth", "downtime-limit", "tls-creds", "tls-hostname", "tls-authz"],
        |_, _| Ok(json!({})),
    ),
    ("query-migrate-parameters", &[], |_, _| {
        Ok(json!({ "max-bandwidth": 134217728, "downtime-limit": 300, "tls-creds": "", "tls-hostname": "" }))
    }),
    ("migrate", &["uri", "blk", "inc", "detach", "resume"], |m, a| {
        let uri = string_arg(a, "uri")?;
        m.migrate(uri).map(|()| json!({}))
    }),
    ("migrate-incoming", &["uri"], |m, a| {
        let uri = string_arg(a, "uri")?;
        m.migrate_incoming(uri).map(|()| json!({}))
    }),
    ("query-migrate", &[], |m, _| Ok(m.migration.query())),
    ("migrate_cancel", &[], |_, _| Err(QmpError::generic("a save cannot be cancelled once it has started"))),
    ("getfd", &["fdname"], |m, a| {
        let name = string_arg(a, "fdname")?;
        m.name_fd(name).map(|()| json!({})).map_err(QmpError::generic)
    }),
    ("closefd", &["fdname"], |m, a| {
        let name = string_arg(a, "fdname")?;
        m.take_named_fd(name)
            .map(|_| json!({}))
            .ok_or_else(|| QmpError::generic(format!("File descriptor named '{name}' not found")))
    }),
    ("eject", &["device", "id", "force"], |m, a| {
        let dev = device_arg(a)?;
        let force = a.get("force").and_then(Value::as_bool).unwrap_or(false);
        m.vm.eject(dev, force).map(|()| json!({})).map_err(device_error)
    }),
    ("blockdev-change-medium", &["device", "id", "filename", "format", "read-only-mode", "force"], |m, a| {
        let dev = device_arg(a)?;
        let file = string_arg(a, "filename")?;
        let format = a.get("format").and_then(Value::as_str);
        m.vm.change_medium(dev, file, format).map(|()| json!({})).map_err(device_error)
    }),
    ("send-key", &["keys", "hold-time"], |m, a| {
        let keys =
            a.get("keys").and_then(Value::as_array).ok_or_else(|| QmpError::generic("Parameter 'keys' is missing"))?;
        let names = keys
            .iter()
            .map(|k| match (k.get("type").and_then(Value::as_str), &k["data"]) {
                (Some("qcode"), Value::String(name)) => Ok(name.clone()),
                _ => Err(QmpError::generic("each key must be {\"type\": \"qcode\", \"data\": NAME}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hold = a.get("hold-time").and_then(Value::as_u64).unwrap_or(100).min(10_000) as u32;
        m.vm.send_keys(&names, hold).map(|()| json!({})).map_err(QmpError::generic)
    }),
    // quern's PC has no hotplug (neither has QEMU's IDE): a known device is refused as
    // QEMU refuses it.
    ("device_del", &["id"], |m, a| {
        let id = string_arg(a, "id")?;
        if m.vm.info().peripherals.iter().any(|(p, _)| p == id) {
            Err(QmpError::generic(format!("Device '{id}' does not support hotplugging")))
        } else {
            Err(QmpError { class: "DeviceNotFound", desc: format!("Device '{id}' not found") })
        }
    }),
    ("query-pci", &[], |m, _| {
        let devices: Vec<Value> = m
            .vm
            .pci_functions()
            .iter()
            .map(|f| {
                let regions: Vec<Value> = f
                    .regions
                    .iter()
                    .map(|&(bar, io, address, size)| {
                        let mut r = json!({ "bar": bar, "type": if io { "io" } else { "memory" }, "address": address, "size": size });
                        if !io {
                            r["prefetch"] = json!(false);
                            r["mem_type_64"] = json!(false);
                        }
                        r
                    })
                    .collect();
                let mut d = json!({
                    "bus": 0, "slot": f.slot, "function": f.function,
                    "class_info": { "class": f.class },
                    "id": { "vendor": f.vendor, "device": f.device,
                            "subsystem-vendor": f.subsystem_vendor, "subsystem": f.subsystem },
                    "qdev_id": "", "regions": regions,
                });
                if let Some((line, pin)) = f.irq {
                    d["irq"] = json!(line);
                    d["irq_pin"] = json!(pin);
                }
                d
            })
            .collect();
        Ok(json!([{ "bus": 0, "devices": devices }]))
    }),
    ("query-block", &[], |m, _| Ok(Value::Array(m.vm.blocks().iter().map(crate::block::query_block).collect()))),
    ("query-blockstats", &["query-nodes"], |m, _| {
        Ok(Value::Array(m.vm.blocks().iter().map(crate::block::blockstats).collect()))
    }),
    ("query-named-block-nodes", &["flat"], |m, _| {
        Ok(Value::Array(m.vm.blocks().iter().filter_map(crate::block::named_node).collect()))
    }),
    ("query-jobs", &[], |_, _| Ok(json!([]))),
    ("qom-list-types", &["implements", "abstract"], |_, _| {
        let types = [
            "tcg-accel",
            "kvm-accel",
            "pc-i440fx-7.2-machine",
            "isa-serial",
            "e1000",
            "ide-hd",
            "ide-cd",
            "isa-debugcon",
            "isa-debug-exit",
            "qemu64-x86_64-cpu",
            "max-x86_64-cpu",
            "host-x86_64-cpu",
        ];
        Ok(Value::Array(types.iter().map(|t| json!({ "name": t })).collect()))
    }),
    ("qom-list-properties", &["typename"], |_, _| Ok(json!([]))),
    ("qom-list", &["path"], |m, a| {
        let path = string_arg(a, "path")?;
        let mut list = vec![json!({ "name": "type", "type": "string" })];
        match path {
            "/machine/peripheral" => {
                let ids = m.vm.info().peripherals.into_iter();
                list.extend(ids.map(|(id, ty)| json!({ "name": id, "type": format!("child<{ty}>") })));
            }
            "/" | "/machine" | "/machine/peripheral-anon" | "/machine/unattached" => {}
            _ => return Err(QmpError { class: "DeviceNotFound", desc: format!("Device '{path}' not found") }),
        }
        Ok(Value::Array(list))
    }),
    ("device-list-properties", &["typename"], |_, a| {
        let t = string_arg(a, "typename")?;
        Err(QmpError { class: "DeviceNotFound", desc: format!("Device '{t}' not found") })
    }),
];

/// A block command's drive: `device` (the drive's name) or `id` (its `-device` id).
fn device_arg(a: &Args) -> Result<&str, QmpError> {
    match (a.get("device"), a.get("id")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => Ok(s),
        _ => Err(QmpError::generic("give 'device' or 'id' (a string)")),
    }
}

/// "Device 'x' not found" is DeviceNotFound, as in QEMU; the rest GenericError.
fn device_error(e: String) -> QmpError {
    let class = if e.ends_with("not found") { "DeviceNotFound" } else { "GenericError" };
    QmpError { class, desc: e }
}

fn string_arg<'a>(a: &'a Args, name: &str) -> Result<&'a str, QmpError> {
    match a.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(QmpError::generic(format!("Invalid parameter type for '{name}', expected: string"))),
        None => Err(QmpError::generic(format!("Parameter '{name}' is missing"))),
    }
}

/// Runs `command` with `args` (an object).
pub fn execute(monitor: &Arc<Monitor>, command: &str, args: &Value) -> Result<Value, QmpError> {
    let Some((_, allowed, handler)) = COMMANDS.iter().find(|c| c.0 == command) else {
        return Err(QmpError { class: "CommandNotFound", desc: format!("The command {command} has not been found") });
    };
    let empty = Map::new();
    let args = args.as_object().unwrap_or(&empty);
    if let Some(k) = args.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
    }
    handler(monitor, args)
}
