//! `-d ITEMS` and `-D FILE`: QEMU's log items mapped onto `log` filters.
//!
//! Each item turns on the `log` targets that report it. `RUST_LOG` still works and is
//! applied last, so it can refine or override what `-d` chose.

use std::path::Path;

/// A `-d` item: its name, the `log` filter it enables, and a line of help.
#[derive(Debug)]
pub struct LogItem {
    pub name: &'static str,
    filter: &'static str,
    pub help: &'static str,
}

/// The items quern implements, named as QEMU names them where QEMU has the item.
pub const LOG_ITEMS: &[LogItem] = &[
    LogItem { name: "in_asm", filter: "quern_tcg::in_asm=trace", help: "show the guest code of each translated block" },
    LogItem {
        name: "out_asm",
        filter: "quern_tcg::out_asm=trace",
        help: "show the host code of each translated block",
    },
    LogItem { name: "op_opt", filter: "quern_tcg::op=trace", help: "show the IR of each block after the passes" },
    LogItem { name: "exec", filter: "quern_tcg::exec=trace", help: "show each block as it is entered" },
    LogItem {
        name: "int",
        filter: "quern_machine_pc=debug,quern_devices::pic=trace,quern_tcg::interrupt=debug",
        help: "show interrupts and exceptions",
    },
    LogItem { name: "cpu", filter: "quern_tcg=trace,quern_accel_kvm=debug", help: "show CPU state and JIT internals" },
    LogItem { name: "cpu_reset", filter: "quern_machine_pc=debug", help: "show machine and CPU resets" },
    LogItem {
        name: "unimp",
        filter: "quern_core::bus=debug,quern_devices=debug",
        help: "show accesses to unimplemented device registers",
    },
    LogItem {
        name: "guest_errors",
        filter: "quern_core::bus=debug,quern_devices=debug",
        help: "show guest misuse of devices and unassigned I/O",
    },
    LogItem { name: "pio", filter: "quern_core::bus=trace", help: "show every port I/O access (quern)" },
    LogItem { name: "mmio", filter: "quern_core::bus=trace", help: "show every MMIO access (quern)" },
];

/// QEMU's items that quern has no equivalent for yet: refused by name.
const NOT_YET: &[&str] = &[
    "op",
    "op_ind",
    "op_plugin",
    "fpu",
    "mmu",
    "pcall",
    "page",
    "nochain",
    "plugin",
    "strace",
    "tid",
    "invalid_mem",
    "vpu",
];

/// Checks a `-d` list; `Ok(None)` for `help`.
pub fn check_items(items: &str) -> Result<Option<Vec<&'static LogItem>>, String> {
    let mut out = Vec::new();
    for item in items.split(',') {
        if item == "help" || item == "?" {
            return Ok(None);
        }
        if let Some(li) = LOG_ITEMS.iter().find(|l| l.name == item) {
            out.push(li);
        } else if NOT_YET.contains(&item) || item.starts_with("trace:") {
            return Err(format!("log item '{item}' is not supported yet (see -d help)"));
        } else {
            return Err(format!("unknown log item '{item}' (see -d help)"));
        }
    }
    Ok(Some(out))
}

/// The text `-d help` prints.
pub fn help() -> String {
    let mut s = String::from("Log items (comma separated):\n");
    for li in LOG_ITEMS {
        s.push_str(&format!("{:<13}{}\n", li.name, li.help));
    }
    s.push_str("RUST_LOG=<filter> refines the selection (env_logger syntax).\n");
    s
}

/// Starts the logger: warnings by default, plus what the items ask for.
pub fn init(items: &[&'static LogItem], file: Option<&Path>) -> Result<(), String> {
    let mut filter = String::from("warn");
    for li in items {
        filter.push(',');
        filter.push_str(li.filter);
    }
    let mut b = env_logger::Builder::new();
    b.parse_filters(&filter);
    if let Ok(env) = std::env::var("RUST_LOG") {
        b.parse_filters(&env);
    }
    if let Some(path) = file {
        let f = std::fs::File::create(path).map_err(|e| format!("-D {}: cannot create: {e}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.format_timestamp(None).init();
    Ok(())
}
