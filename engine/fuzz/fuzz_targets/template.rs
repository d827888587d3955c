//! Any bytes as a request body filled by a fixed template (both modes): `fill`,
//! `strip_variables` and `selector` never panic; an `Ok` fill is valid JSON to our validator,
//! and to serde_json whenever the input was; an error leaves `out` alone.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardgate_engine::llm;
use shardgate_engine::template::{self, RawTemplate, Template, TemplateBody};

fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| {
        let raw: Vec<RawTemplate> = ["prepend", "replace"]
            .iter()
            .map(|mode| {
                let text = format!(
                    r#"{{"name":"{mode}","mode":"{mode}","defaults":{{"B":"b"}},"messages":[
                        {{"role":"system","content":"Say \"{{{{A}}}}\" \\ {{{{{{{{x}}}} {{{{B}}}}"}},
                        {{"role":"user","content":"{{{{A}}}}</script>{{{{ B }}}}"}}]}}"#
                );
                serde_json::from_str(&text).expect("template json")
            })
            .collect();
        let list = template::validate(raw, |f, r| panic!("{f}: {r}"));
        assert_eq!(list.len(), 2);
        list
    })
}

fuzz_target!(|data: &[u8]| {
    let input_parses = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    for t in templates() {
        let mut out = b"x".to_vec();
        match template::fill(t, data, &mut out) {
            Ok(()) => {
                let filled = out.get(1..).unwrap_or_default();
                assert!(matches!(
                    llm::inspect(filled),
                    Ok(_) | Err(llm::BodyError::BadField(_))
                ));
                if input_parses {
                    let v: serde_json::Value =
                        serde_json::from_slice(filled).expect("filled body parses");
                    let o = v.as_object().expect("an object");
                    assert!(!o.contains_key("variables") && !o.contains_key("template"));
                    assert!(o.get("messages").is_some_and(|m| m.is_array()));
                }
            }
            Err(_) => assert_eq!(out, b"x"),
        }
    }
    let mut out = Vec::new();
    match template::strip_variables(data, &mut out) {
        Ok(true) if input_parses => {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("stripped body parses");
            assert!(v.get("variables").is_none());
        }
        Ok(_) | Err(_) => {}
    }
    if let Ok(b) = TemplateBody::read(data) {
        let _ = b.selector();
    }
});
