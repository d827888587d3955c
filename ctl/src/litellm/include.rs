//! `include:`: other YAML files merged into the config, as LiteLLM (1.110.2,
//! `proxy/common_utils/config_includes.py`) merges them before it reads anything else:
//!
//! - `include` must be a list of file paths (anything else: LiteLLM refuses the config);
//! - an entry is read next to the file that declares it; when no file is there but one is next
//!   to the root config, that one is read (LiteLLM warns);
//! - files are merged in order, breadth first: an included file's own includes come after the
//!   entries already waiting; a file already merged is not merged again;
//! - a key an included file sets replaces the config's, except that two lists are joined (the
//!   config's first): `model_list` entries add up;
//! - a missing file, or one that is not a mapping: LiteLLM refuses to start.
//!
//! The reading is handed in (`read`), so the merge is tested without files.

use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};

use super::yaml::{self, Value};

/// Most files one config may include, transitively.
pub const INCLUDED_FILES_MAX: usize = 256;

/// `doc` (the config at `root`) with its includes merged, and the files merged in order; or
/// why LiteLLM would refuse it. `exists` and `read` reach the files.
pub fn merge(
    doc: Value,
    root: &Path,
    exists: &dyn Fn(&Path) -> bool,
    read: &dyn Fn(&Path) -> Result<String, String>,
) -> Result<(Value, Vec<PathBuf>), String> {
    let root = absolute(root);
    let mut pending: VecDeque<(String, PathBuf)> = entries(&doc, &root)?.into();
    let mut loaded = vec![root.clone()];
    let mut merged = Vec::new();
    let mut config = doc;
    while let Some((entry, declared_in)) = pending.pop_front() {
        let at = resolve(&entry, &declared_in, &root, exists);
        if loaded.contains(&at) {
            continue;
        }
        if merged.len() >= INCLUDED_FILES_MAX {
            return Err(format!(
                "include: more than {INCLUDED_FILES_MAX} files included"
            ));
        }
        if !exists(&at) {
            return Err(format!("include: file not found: {}", at.display()));
        }
        let text = read(&at)?;
        let included = yaml::parse(&text).map_err(|e| format!("include {}: {e}", at.display()))?;
        if !matches!(included, Value::Map(_)) {
            return Err(format!("include: {} is not a YAML mapping", at.display()));
        }
        pending.extend(entries(&included, &at)?);
        config = joined(&config, &included);
        loaded.push(at.clone());
        merged.push(at);
    }
    if let Value::Map(m) = &mut config {
        m.retain(|(k, _)| k != "include");
    }
    Ok((config, merged))
}

/// The `include` entries of `doc` (declared in `file`).
fn entries(doc: &Value, file: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let Some(v) = doc.get("include") else {
        return Ok(Vec::new());
    };
    let bad = || {
        format!(
            "include in {}: must be a list of file paths",
            file.display()
        )
    };
    let Value::Seq(list) = v else {
        return Err(bad());
    };
    list.iter()
        .map(|e| {
            e.as_str()
                .map(|s| (s.to_owned(), file.to_path_buf()))
                .ok_or_else(bad)
        })
        .collect()
}

/// The file `entry` names: next to `declared_in`, unless only `root`'s neighbour exists.
fn resolve(
    entry: &str,
    declared_in: &Path,
    root: &Path,
    exists: &dyn Fn(&Path) -> bool,
) -> PathBuf {
    let beside = |f: &Path| absolute(&f.parent().unwrap_or(Path::new("/")).join(entry));
    let declared = beside(declared_in);
    let at_root = beside(root);
    if at_root == declared || !exists(&at_root) || exists(&declared) {
        declared
    } else {
        at_root
    }
}

/// `base` with `included` merged: its keys replace the base's, two lists are joined; keys in
/// the base's order, then the included file's new ones (a Python dict's order). A key written
/// twice in one file counts once, with its last value (as PyYAML reads it).
fn joined(base: &Value, included: &Value) -> Value {
    let mut keys: Vec<&str> = Vec::new();
    for m in [base, included] {
        if let Value::Map(m) = m {
            for (k, _) in m {
                if !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
        }
    }
    let out = keys
        .into_iter()
        .filter(|k| *k != "include" || base.get(k).is_some())
        .filter_map(|k| {
            let v = match (base.get(k), included.get(k)) {
                (Some(Value::Seq(a)), Some(Value::Seq(b))) if k != "include" => {
                    Value::Seq(a.iter().chain(b).cloned().collect())
                }
                (Some(b), _) if k == "include" => b.clone(),
                (_, Some(i)) => i.clone(),
                (Some(b), None) => b.clone(),
                (None, None) => return None,
            };
            Some((k.to_owned(), v))
        })
        .collect();
    Value::Map(out)
}

/// `p` made absolute and its `.` and `..` taken out, without following links (Python's
/// `os.path.abspath`).
fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(files: &[(&str, &str)]) -> Result<(Value, Vec<PathBuf>), String> {
        let map: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect();
        let root = yaml::parse(&map[Path::new("/c/config.yaml")]).expect("yaml");
        merge(
            root,
            Path::new("/c/config.yaml"),
            &|p| map.contains_key(p),
            &|p| map.get(p).cloned().ok_or_else(|| "unreadable".to_owned()),
        )
    }

    fn groups(v: &Value) -> Vec<String> {
        match v.get("model_list") {
            Some(Value::Seq(l)) => l
                .iter()
                .filter_map(|e| e.get("model_name")?.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn lists_join_other_keys_are_replaced_breadth_first_each_file_once() {
        let (v, files) = run(&[
            (
                "/c/config.yaml",
                "include: [models/a.yaml, b.yaml]\nmodel_list:\n  - model_name: root\nrouter_settings: {num_retries: 1}\n",
            ),
            // Its own include is next to it, and read after b.yaml (breadth first).
            (
                "/c/models/a.yaml",
                "include: [deep.yaml, ../b.yaml]\nmodel_list:\n  - model_name: a\n",
            ),
            ("/c/models/deep.yaml", "model_list:\n  - model_name: deep\n"),
            (
                "/c/b.yaml",
                "model_list:\n  - model_name: b\nrouter_settings: {num_retries: 5}\n",
            ),
        ])
        .expect("merges");
        assert_eq!(groups(&v), ["root", "a", "b", "deep"]);
        assert_eq!(
            v.get("router_settings")
                .and_then(|r| r.get("num_retries"))
                .cloned(),
            Some(Value::Int(5))
        );
        assert!(v.get("include").is_none());
        assert_eq!(
            files,
            [
                PathBuf::from("/c/models/a.yaml"),
                PathBuf::from("/c/b.yaml"),
                PathBuf::from("/c/models/deep.yaml")
            ]
        );
    }

    #[test]
    fn an_entry_missing_beside_its_file_is_read_beside_the_root_config() {
        let (v, _) = run(&[
            ("/c/config.yaml", "include: [sub/x.yaml]\n"),
            ("/c/sub/x.yaml", "include: [shared.yaml]\n"),
            ("/c/shared.yaml", "model_list:\n  - model_name: shared\n"),
        ])
        .expect("merges");
        assert_eq!(groups(&v), ["shared"]);
    }

    #[test]
    fn what_litellm_refuses_is_refused() {
        for (files, why) in [
            (
                vec![("/c/config.yaml", "include: x.yaml\n")],
                "must be a list",
            ),
            (vec![("/c/config.yaml", "include: [1]\n")], "must be a list"),
            (
                vec![("/c/config.yaml", "include: [gone.yaml]\n")],
                "not found",
            ),
            (
                vec![
                    ("/c/config.yaml", "include: [l.yaml]\n"),
                    ("/c/l.yaml", "- a\n- b\n"),
                ],
                "not a YAML mapping",
            ),
        ] {
            let e = run(&files).expect_err(why);
            assert!(e.contains(why), "{e}");
        }
    }
}
