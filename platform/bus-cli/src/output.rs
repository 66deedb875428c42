//! Output of the `bus` commands: JSON with `--json`, else aligned text.
//!
//! Every command module prints through here; this module imports nothing from them.

use crate::Cli;
use serde_json::Value;

/// Prints `v` as JSON, or one aligned `key: value` line per member.
pub fn print_object(cli: &Cli, v: &Value) {
    if cli.json {
        println!("{v}");
    } else if let Value::Object(map) = v {
        for (k, v) in map {
            println!("{k:>28}: {v}");
        }
    }
}

/// Prints `rows`: one JSON array with `--json`, else as `text` prints them.
pub fn print_rows(cli: &Cli, rows: Vec<Value>, text: impl FnOnce(&[Value])) {
    if cli.json {
        println!("{}", Value::Array(rows));
    } else {
        text(&rows);
    }
}

/// Prints aligned columns.
pub fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(header.iter().map(|h| h.to_uppercase()).collect())
    );
    for r in rows {
        println!("{}", line(r));
    }
}
