//! `check FILE`: read and validate a config file, the first step of `apply` too.

use std::path::Path;

use shardgate_core::config::{Config, ConfigErrors};

use crate::Failure;

/// Read and validate `path`: the text (what is pushed) and the config. A file that cannot be
/// read or does not validate is a [`Failure::invalid`] naming the file on every line.
pub fn load(path: &Path) -> Result<(String, Config), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::invalid(format!("{}: cannot read: {e}", path.display())))?;
    match Config::from_toml_without_secrets(&text) {
        Ok(config) => Ok((text, config)),
        Err(errors) => Err(Failure::invalid(error_lines(path, &errors))),
    }
}

/// `FILE: field: reason`, one line per problem.
pub fn error_lines(path: &Path, errors: &ConfigErrors) -> String {
    let lines: Vec<String> = errors
        .0
        .iter()
        .map(|e| format!("{}: {e}", path.display()))
        .collect();
    lines.join("\n")
}

/// The `check` command.
pub fn run(path: &Path) -> Result<(), Failure> {
    let (_, config) = load(path)?;
    for w in &config.warnings {
        eprintln!("{}: warning: {w}", path.display());
    }
    println!("{}: ok", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("sgctl-check-{}-{name}", std::process::id()));
        if let Err(e) = std::fs::write(&p, text) {
            panic!("cannot write {}: {e}", p.display());
        }
        p
    }

    #[test]
    fn every_error_names_the_file_and_field() {
        let p = temp(
            "bad.toml",
            "[server]\ncores = 0\n[[routes]]\npath_prefix = \"v1\"\nupstream = \"x\"\n",
        );
        let Err(f) = load(&p) else { panic!("accepted") };
        assert_eq!(f.status, 2);
        let lines: Vec<&str> = f.message.lines().collect();
        let file = p.display().to_string();
        assert!(lines.len() >= 3, "{lines:?}");
        for l in &lines {
            assert!(l.starts_with(&format!("{file}: ")), "{l}");
        }
        assert!(lines
            .iter()
            .any(|l| l.starts_with(&format!("{file}: server.cores: "))));
        assert!(lines
            .iter()
            .any(|l| *l == format!("{file}: routes[0].path_prefix: must start with /")));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn syntax_errors_give_the_line_and_good_files_load() {
        let p = temp("syntax.toml", "[server]\nlisen = 1\n");
        let Err(f) = load(&p) else { panic!("accepted") };
        assert!(
            f.message.starts_with(&format!("{}: line 2: ", p.display())),
            "{}",
            f.message
        );
        let good = temp(
            "good.toml",
            "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"m\"\nprovider = \"mock\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"m\"\n",
        );
        let (text, config) = match load(&good) {
            Ok(v) => v,
            Err(f) => panic!("{}", f.message),
        };
        assert!(text.contains("mock"));
        assert_eq!(config.routes.len(), 1);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&good);
    }

    #[test]
    fn an_unreadable_file_is_invalid() {
        let p = std::env::temp_dir().join("sgctl-check-does-not-exist.toml");
        let Err(f) = load(&p) else { panic!("accepted") };
        assert_eq!(f.status, 2);
        assert!(
            f.message
                .starts_with(&format!("{}: cannot read: ", p.display())),
            "{}",
            f.message
        );
    }
}
