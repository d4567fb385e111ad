//! The TOML configuration file. Every flag can be set three ways, strongest first: on the command line,
//! by a `GTPCHARGE_*` environment variable, in the file. The file is read before the command line is
//! parsed and fills in the environment variables that are not set, so clap applies one precedence rule.
//!
//! ```toml
//! billing_url = "http://billing.internal:50051"
//! [probe]
//! sessions_max = 4000000
//! gtpu_ports = [2152, 3386]
//! ```
//! Keys are flag names with `_` or `-`; sections are only for grouping and may be named anything.
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Finds `--config FILE` (or `GTPCHARGE_CONFIG`) and loads it into the environment.
pub fn load_from_args() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut path = std::env::var_os("GTPCHARGE_CONFIG").map(PathBuf::from);
    for (index, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix("--config=") {
            path = Some(value.into());
        } else if arg == "--config" {
            path = args.get(index + 1).map(PathBuf::from);
        }
    }
    match path {
        Some(path) => load(&path),
        None => Ok(()),
    }
}

fn load(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("config {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("config {}: not valid TOML", path.display()))?;
    let mut settings = Vec::new();
    flatten(&table, &mut settings).with_context(|| format!("config {}", path.display()))?;
    for (key, value) in settings {
        let name = format!("GTPCHARGE_{}", key.replace('-', "_").to_ascii_uppercase());
        if std::env::var_os(&name).is_none() {
            // Called first thing in main, before any other thread exists.
            std::env::set_var(&name, &value);
        }
    }
    Ok(())
}

fn flatten(table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<()> {
    for (key, value) in table {
        match value {
            toml::Value::Table(section) => flatten(section, out)?,
            toml::Value::String(s) => out.push((key.clone(), s.clone())),
            toml::Value::Integer(i) => out.push((key.clone(), i.to_string())),
            toml::Value::Float(f) => out.push((key.clone(), f.to_string())),
            toml::Value::Boolean(b) => out.push((key.clone(), b.to_string())),
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>> = items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        other => bail!("{key}: arrays hold strings or integers, not {}", other.type_str()),
                    })
                    .collect();
                out.push((key.clone(), parts?.join(",")));
            }
            toml::Value::Datetime(d) => out.push((key.clone(), d.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_sections_and_arrays() {
        let table: toml::Table = "billing_url = \"http://x:1\"\n[probe]\nsessions_max = 5\ngtpu_ports = [2152, 3386]\nno_promiscuous = true\n".parse().unwrap();
        let mut out = Vec::new();
        flatten(&table, &mut out).unwrap();
        out.sort();
        assert_eq!(
            out,
            vec![
                ("billing_url".into(), "http://x:1".into()),
                ("gtpu_ports".into(), "2152,3386".into()),
                ("no_promiscuous".into(), "true".into()),
                ("sessions_max".into(), "5".into()),
            ]
        );
        let bad: toml::Table = "x = [1.5]".parse().unwrap();
        assert!(flatten(&bad, &mut Vec::new()).is_err());
    }
}
