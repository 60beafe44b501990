//! The block queries (`query-block`, `query-blockstats`, `query-named-block-nodes`) in
//! the shapes QEMU 7.2 answers them, which libvirt reads for `domblklist`, `domstats`
//! and at start-up.

use serde_json::{json, Value};

use crate::BlockInfo;

fn image(m: &crate::Medium) -> Value {
    json!({ "filename": m.file, "format": m.format, "virtual-size": m.size, "dirty-flag": false })
}

fn inserted(b: &BlockInfo, m: &crate::Medium) -> Value {
    json!({
        "node-name": b.node_name, "file": m.file, "ro": m.read_only, "drv": m.format, "encrypted": false,
        "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "image": image(m), "backing_file_depth": 0, "write_threshold": 0,
        "cache": { "writeback": true, "direct": false, "no-flush": false },
    })
}

pub fn query_block(b: &BlockInfo) -> Value {
    let mut v = json!({
        "device": b.device, "qdev": b.qdev, "locked": b.locked, "removable": b.removable,
        "type": "unknown", "io-status": "ok",
    });
    if b.removable {
        v["tray_open"] = json!(b.tray_open);
    }
    if let Some(m) = &b.medium {
        v["inserted"] = inserted(b, m);
    }
    v
}

pub fn blockstats(b: &BlockInfo) -> Value {
    let s = &b.stats;
    json!({
        "device": b.device, "qdev": b.qdev, "node-name": b.node_name,
        "stats": {
            "rd_bytes": s.rd_bytes, "wr_bytes": s.wr_bytes, "rd_operations": s.rd_ops,
            "wr_operations": s.wr_ops, "flush_operations": s.flush_ops, "unmap_operations": 0,
            "unmap_bytes": 0, "rd_total_time_ns": 0, "wr_total_time_ns": 0, "flush_total_time_ns": 0,
            "unmap_total_time_ns": 0, "wr_highest_offset": 0, "rd_merged": 0, "wr_merged": 0,
            "unmap_merged": 0, "failed_rd_operations": 0, "failed_wr_operations": 0,
            "failed_flush_operations": 0, "failed_unmap_operations": 0, "invalid_rd_operations": 0,
            "invalid_wr_operations": 0, "invalid_flush_operations": 0, "invalid_unmap_operations": 0,
            "account_invalid": true, "account_failed": true, "timed_stats": [],
        },
    })
}

pub fn named_node(b: &BlockInfo) -> Option<Value> {
    b.medium.as_ref().map(|m| inserted(b, m))
}
