//! Azure OpenAI: OpenAI's wire format, under a deployment's path (I/O-free).
//!
//! `POST /v1/chat/completions` for deployment `gpt4o-east` becomes
//! `POST /openai/deployments/gpt4o-east/chat/completions?api-version=2024-10-21`; the body, the
//! answer, the stream and the usage are OpenAI's. The credential goes as `api-key` (the config
//! builds that header line).

use crate::limits::AZURE_DEPLOYMENT_BYTES_MAX;

/// The OpenAI paths an Azure deployment serves, and their operation under the deployment.
const OPERATIONS: [(&str, &str); 3] = [
    ("/v1/chat/completions", "chat/completions"),
    ("/v1/completions", "completions"),
    ("/v1/embeddings", "embeddings"),
];

/// Writes into `out` (cleared first) the Azure path for `openai_path` (query removed) on
/// `deployment`, with `api_version`. `Err`: a static, JSON-safe reason for a 400.
pub fn path(
    openai_path: &str,
    deployment: &str,
    api_version: &str,
    out: &mut String,
) -> Result<(), &'static str> {
    let Some((_, op)) = OPERATIONS.iter().find(|(p, _)| *p == openai_path) else {
        return Err(
            "an Azure OpenAI upstream serves /v1/chat/completions, /v1/completions, \
                    /v1/embeddings and /v1/messages",
        );
    };
    if !is_deployment_name(deployment) {
        return Err("the model must name an Azure deployment: 1 to 64 of A-Z a-z 0-9 - _ .");
    }
    out.clear();
    out.push_str("/openai/deployments/");
    out.push_str(deployment);
    out.push('/');
    out.push_str(op);
    out.push_str("?api-version=");
    out.push_str(api_version);
    Ok(())
}

/// Azure's rule for deployment names; nothing else may go into the path unescaped.
fn is_deployment_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= AZURE_DEPLOYMENT_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_openai_path_maps_to_its_operation_under_the_deployment() {
        let mut out = String::from("left over");
        for (from, to) in [
            (
                "/v1/chat/completions",
                "/openai/deployments/gpt-4o_east.1/chat/completions?api-version=2024-10-21",
            ),
            (
                "/v1/completions",
                "/openai/deployments/gpt-4o_east.1/completions?api-version=2024-10-21",
            ),
            (
                "/v1/embeddings",
                "/openai/deployments/gpt-4o_east.1/embeddings?api-version=2024-10-21",
            ),
        ] {
            assert_eq!(path(from, "gpt-4o_east.1", "2024-10-21", &mut out), Ok(()));
            assert_eq!(out, to);
        }
    }

    #[test]
    fn other_paths_and_unsafe_deployments_are_refused() {
        let mut out = String::new();
        for p in ["/v1/models", "/v1/responses", "/v1/chat/completions/x", ""] {
            assert!(path(p, "d", "v", &mut out).is_err(), "{p}");
        }
        let long = "a".repeat(AZURE_DEPLOYMENT_BYTES_MAX + 1);
        for d in [
            "",
            "a/b",
            "a?b",
            "a b",
            "a%2f",
            "..",
            ".",
            "é",
            long.as_str(),
        ] {
            assert!(
                path("/v1/chat/completions", d, "v", &mut out).is_err(),
                "{d:?}"
            );
        }
        let longest = "a".repeat(AZURE_DEPLOYMENT_BYTES_MAX);
        assert!(path("/v1/chat/completions", &longest, "v", &mut out).is_ok());
    }
}
