//! How client commands print: etcdctl's `simple` lines, `json` (proto3 JSON of the response) and
//! `table`.

use serde::Serialize;
use synod_client::mvccpb::KeyValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Simple,
    Json,
    Table,
}

/// Prints a response as one JSON document.
pub fn json<T: Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string(value).map_err(|e| format!("encoding JSON: {e}"))?;
    println!("{text}");
    Ok(())
}

/// Renders bytes for humans: text as is, or hex with `--hex`.
pub fn bytes(data: &[u8], hex: bool) -> String {
    if hex {
        data.iter().map(|b| format!("\\x{b:02x}")).collect()
    } else {
        String::from_utf8_lossy(data).into_owned()
    }
}

/// Prints key and value lines, as etcdctl does.
pub fn key_value(kv: &KeyValue, value_only: bool, keys_only: bool, hex: bool) {
    if !value_only {
        println!("{}", bytes(&kv.key, hex));
    }
    if !keys_only {
        println!("{}", bytes(&kv.value, hex));
    }
}

/// Prints rows as a boxed table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = || {
        let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        format!("+{}+", parts.join("+"))
    };
    let render = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!(" {:^width$} ", c, width = widths[i]))
            .collect();
        format!("|{}|", parts.join("|"))
    };
    println!("{}", line());
    println!("{}", render(header.iter().map(|h| h.to_string()).collect()));
    println!("{}", line());
    for row in rows {
        println!("{}", render(row.clone()));
    }
    println!("{}", line());
}

/// Human-readable byte sizes, as etcdctl prints db sizes.
pub fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}
