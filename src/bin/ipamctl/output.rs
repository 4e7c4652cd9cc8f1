//! How results are printed: an aligned table for people, or one JSON object per line for
//! scripts (`--output json`).

use ipam_bindings::pb::api;
use prost_types::Timestamp;
use serde_json::{Value, json};

pub use crate::cli::Format;

fn time(timestamp: &Option<Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return String::new();
    };
    let system_time = std::time::UNIX_EPOCH
        + std::time::Duration::new(timestamp.seconds.max(0) as u64, timestamp.nanos.max(0) as u32);
    humantime::format_rfc3339_micros(system_time).to_string()
}

fn state(binding: &api::ServiceBinding) -> &'static str {
    match binding.provisioning.as_ref().map(|p| p.state()) {
        Some(api::ProvisioningState::Provisioning) => "PROVISIONING",
        Some(api::ProvisioningState::Active) => "ACTIVE",
        _ => "UNSPECIFIED",
    }
}

/// A resource printed as one JSON object per line or as a table, alone or as a list.
pub trait Printable: Sized {
    fn json(&self) -> Value;
    fn table(items: &[Self]) -> Table;
}

impl Printable for api::Prefix {
    fn json(&self) -> Value {
        prefix_json(self)
    }

    fn table(items: &[Self]) -> Table {
        prefix_table(items)
    }
}

impl Printable for api::ServiceBinding {
    fn json(&self) -> Value {
        binding_json(self)
    }

    fn table(items: &[Self]) -> Table {
        binding_table(items)
    }
}

pub fn print<R: Printable>(items: &[R], format: Format) {
    match format {
        Format::Json => items.iter().for_each(|item| println!("{}", item.json())),
        Format::Table => println!("{}", R::table(items).render()),
    }
}

fn prefix_json(prefix: &api::Prefix) -> Value {
    json!({
        "id": prefix.id, "account_id": prefix.account_id, "cidr": prefix.cidr, "asn": prefix.asn,
        "description": prefix.description, "created_at": time(&prefix.created_at), "modified_at": time(&prefix.modified_at),
    })
}

pub fn binding_json(binding: &api::ServiceBinding) -> Value {
    json!({
        "id": binding.id, "cidr": binding.cidr, "state": state(binding), "service_id": binding.service_id,
        "service_name": binding.service_name, "prefix_id": binding.prefix_id, "account_id": binding.account_id,
        "created_at": time(&binding.created_at), "modified_at": time(&binding.modified_at),
    })
}

/// Rows of cells, printed with every column as wide as its widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut out = vec![line(self.header.iter().map(|h| h.to_string()).collect())];
        out.extend(self.rows.iter().map(|row| line(row.clone())));
        out.join("\n")
    }
}

fn prefix_table(prefixes: &[api::Prefix]) -> Table {
    let mut table = Table::new(vec!["ID", "CIDR", "ASN", "DESCRIPTION", "CREATED"]);
    for p in prefixes {
        table.push(vec![
            p.id.clone(),
            p.cidr.clone(),
            p.asn.map(|a| a.to_string()).unwrap_or_default(),
            p.description.clone(),
            time(&p.created_at),
        ]);
    }
    table
}

fn binding_table(bindings: &[api::ServiceBinding]) -> Table {
    let mut table = Table::new(vec!["ID", "CIDR", "SERVICE", "STATE", "PREFIX", "CREATED"]);
    for b in bindings {
        table.push(vec![
            b.id.clone(),
            b.cidr.clone(),
            b.service_name.clone(),
            state(b).into(),
            b.prefix_id.clone(),
            time(&b.created_at),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut table = Table::new(vec!["A", "LONG HEADER"]);
        table.push(vec!["wide cell".into(), "x".into()]);
        assert_eq!(table.render(), "A          LONG HEADER\nwide cell  x");
    }
}
