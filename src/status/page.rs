//! The facts of `/status` as one JSON document, and the same facts as a small
//! self-contained HTML page (no scripts, no external assets; it reloads itself every two
//! seconds). Durations and times are numbers in seconds (times: since the Unix epoch).

use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};

use super::StatusState;
use crate::stats::unix_time;

/// The `/status` document.
pub fn document(s: &StatusState) -> Value {
    let stats = &s.stats;
    let now = SystemTime::now();
    let running = s.engine.pass_progress().map(|c| {
        json!({ "scanned": c.scanned, "changes": c.changes(), "bytes": c.bytes, "errors": c.errors })
    });
    let last_in_sync = stats.last_in_sync();
    let (watches, degraded) = stats.watcher();
    let ready = stats.ready();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "source": s.source,
        "replica": s.replica,
        "started": unix_time(stats.started()),
        "uptime_seconds": now.duration_since(stats.started()).map_or(0.0, |d| d.as_secs_f64()),
        "alive": stats.alive(Instant::now()),
        "ready": ready.is_ok(),
        "not_ready_reason": ready.err(),
        "first_pass_done": stats.first_pass_done(),
        "pass_running": running,
        "last_pass": stats.last_pass(),
        "replication_lag_seconds": stats.lag(Instant::now()).as_secs_f64(),
        "in_sync": stats.in_sync(),
        "last_in_sync": last_in_sync.map(unix_time),
        "last_in_sync_age_seconds":
            last_in_sync.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_secs_f64()),
        "queue_depth": stats.queue_depth(),
        "watches": watches,
        "watcher_degraded": degraded,
        "guard": stats.guard(),
        "recent_errors": stats.recent_errors(),
    })
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as page text: strings bare, null as a dash, numbers rounded to 3 places.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => esc(s),
        Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or_default()),
        other => esc(&other.to_string()),
    }
}

/// A Unix time as RFC 3339 (UTC), or a dash.
fn time(v: &Value) -> String {
    match v.as_f64() {
        Some(t) if t > 0.0 => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "—".into(),
    }
}

/// The status page.
pub fn html(doc: &Value) -> String {
    let ok = |b: bool, yes: &str, no: &str| {
        if b { format!("<b class=ok>{yes}</b>") } else { format!("<b class=bad>{no}</b>") }
    };
    let mut rows = vec![
        ("Source", show(&doc["source"])),
        ("Replica", show(&doc["replica"])),
        ("Ready", {
            let reason = doc["not_ready_reason"].as_str().map(esc).unwrap_or_default();
            format!("{} {reason}", ok(doc["ready"] == true, "ready", "not ready:"))
        }),
        ("In sync", ok(doc["in_sync"] == true, "yes", "no")),
        ("Replication lag (s)", show(&doc["replication_lag_seconds"])),
        ("Last in sync", time(&doc["last_in_sync"])),
        ("Queue depth", show(&doc["queue_depth"])),
        ("Watches", show(&doc["watches"])),
        ("Watcher degraded", show(&doc["watcher_degraded"])),
        ("Deletion guard", show(&doc["guard"])),
        ("Uptime (s)", show(&doc["uptime_seconds"])),
    ];
    let pass = &doc["last_pass"];
    if pass.is_object() {
        for (label, key) in [
            ("Last pass: entries", "scanned"),
            ("Last pass: changes", "changes"),
            ("Last pass: bytes", "bytes"),
            ("Last pass: errors", "errors"),
            ("Last pass: duration (s)", "duration_seconds"),
        ] {
            rows.push((label, show(&pass[key])));
        }
    }
    if let Some(running) = doc["pass_running"].as_object() {
        rows.push(("Pass running: entries", show(&running["scanned"])));
        rows.push(("Pass running: bytes", show(&running["bytes"])));
    }
    let mut body = String::new();
    for (label, value) in rows {
        let _ = writeln!(body, "<tr><th>{label}</th><td>{value}</td></tr>");
    }
    let mut errors = String::new();
    for e in doc["recent_errors"].as_array().into_iter().flatten() {
        let _ = writeln!(
            errors,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(&e["time"]),
            show(&e["op"]),
            show(&e["path"]),
            show(&e["error"])
        );
    }
    format!(
        r#"<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=2>
<title>replicad {version}</title>
<style>
body{{font:15px system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;margin-bottom:1.5em}}
th,td{{text-align:left;padding:.25em .8em;border-bottom:1px solid #ddd}}
.ok{{color:#0a0}}.bad{{color:#c00}}
</style></head><body>
<h1>replicad {version}</h1>
<table id=facts>
{body}</table>
<h2>Last errors</h2>
<table id=errors><tr><th>time</th><th>op</th><th>path</th><th>error</th></tr>
{errors}</table>
<p>Machine-readable: <a href=/status>/status</a> · <a href=/metrics>/metrics</a></p>
</body></html>
"#,
        version = esc(doc["version"].as_str().unwrap_or_default()),
    )
}
