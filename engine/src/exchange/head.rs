//! The request head, decided: what a complete head asks for (health, the mock model, a
//! route, an LLM call, `/v1/models`, a tenant's access requests) and the upstream head for a
//! plain proxied request.

use std::net::IpAddr;

use crate::telemetry::context::{span_id, SpanId, TraceCtx};

use crate::access::ACCESS_REQUESTS_PATH;
use crate::config::{Auth, Provider};
use crate::error::{Error, Shape};
use crate::http::request::{self, Credentials, Method, RequestHead};
use crate::limits::HEADERS_ARRAY_LEN;
use crate::llm::{self};
use crate::mock::{self, MockEndpoint};
use crate::snapshot::{RouteId, Snapshot, Target, TenantId};
use crate::tenant::{presented_key, KeyMemo};

/// What the head says to do, decided without I/O.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Health {
        readiness: bool,
    },
    Mock(MockEndpoint),
    Proxy {
        target: Target,
    },
    /// A tenant's request to an LLM endpoint: read the body whole, check the model, admit by
    /// its token estimate, then forward (the upstream head is written after the body is read).
    ///
    /// `target`: the route's upstream, used when the body names no model group.
    ProxyLlm {
        target: Option<Target>,
    },
    /// `GET /v1/models` with `[[models]]`: the groups the caller may use, answered here.
    Models,
    /// A tenant's `/v1/access-requests`: `file` a request for a model (`POST`), or list its
    /// requests (`GET`); handed to the access thread (`crate::access`).
    AccessRequests {
        file: bool,
    },
    Refuse(Error),
}

impl Action {
    /// Work the shard counts against `requests_inflight_max`: everything but health checks and
    /// our own refusals, which cost nothing to answer.
    pub fn is_work(&self) -> bool {
        !matches!(self, Action::Health { .. } | Action::Refuse(_))
    }

    /// A tenant's request of this kind is admitted at the head, as one request of no tokens.
    /// An LLM call (and a call to the mock model that carries a prompt) is admitted once its
    /// body is read, at its token estimate ([`super::call::Call`]).
    pub fn admits_at_head(&self) -> bool {
        match self {
            Action::Proxy { .. } | Action::Models | Action::AccessRequests { .. } => true,
            Action::Mock(m) => !m.takes_body(),
            Action::ProxyLlm { .. } | Action::Health { .. } | Action::Refuse(_) => false,
        }
    }
}

/// What [`decide`] found in a complete head.
#[derive(Debug)]
pub struct Decision {
    pub head: RequestHead,
    pub action: Action,
    /// The route taken (None for health checks and unrouted paths).
    pub route: Option<RouteId>,
    /// The tenant whose key the request presented (None without `auth = "keys"`).
    pub tenant: Option<TenantId>,
    /// The shape of our own error answers: Anthropic's for a call to its API
    /// (`/v1/messages`), OpenAI's otherwise.
    pub shape: Shape,
    /// The request's place in its trace (with `[telemetry]`; never for health checks).
    pub trace: Option<TraceCtx>,
    /// A plain proxied request: the span of its one upstream attempt, whose `traceparent` the
    /// upstream head written into `wbuf` carries.
    pub attempt_span: Option<SpanId>,
}

/// Parse the head in `buf` and decide what to do, writing the upstream head into `wbuf` when
/// proxying. `now_unix_ms`: for keys that expire. `trace`: with tracing on, the sampling ratio
/// and the random source of span ids. `Ok(None)`: the head is incomplete.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    snap: &Snapshot,
    buf: &[u8],
    client_ip: IpAddr,
    client_tls: bool,
    now_unix_ms: u64,
    wbuf: &mut Vec<u8>,
    key_memo: &mut KeyMemo,
    trace: Option<(f64, &mut dyn FnMut() -> u64)>,
) -> Result<Option<Decision>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    let Some(req) = request::parse(buf, &mut headers, &snap.cfg.server.head_limits())? else {
        return Ok(None);
    };
    let head = req.head;
    let path = req.path();
    let plain_path = path.split('?').next().unwrap_or(path);
    let shape = if plain_path == "/v1/messages" {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    };
    let health =
        head.method == Method::Get && matches!(path, "/health/liveness" | "/health/readiness");
    let (trace, mut random) = match trace {
        Some((ratio, random)) if !health => (
            Some(TraceCtx::begin(
                req.header("traceparent"),
                ratio,
                &mut *random,
            )),
            Some(random),
        ),
        _ => (None, None),
    };
    let decided = |action, route, tenant| Decision {
        head,
        action,
        route,
        tenant,
        shape,
        trace,
        attempt_span: None,
    };
    if head.method == Method::Get {
        match path {
            "/health/liveness" | "/health/readiness" => {
                let readiness = path == "/health/readiness";
                return Ok(Some(decided(Action::Health { readiness }, None, None)));
            }
            _ => {}
        }
    }
    // Identify the tenant before anything else: an unknown caller learns nothing (not even
    // which paths route).
    let tenant = match snap.cfg.server.auth {
        Auth::None => None,
        Auth::Keys => {
            let key = presented_key(req.header("authorization"), req.header("x-api-key"));
            match key.and_then(|k| snap.tenant_by_key(k, now_unix_ms, key_memo)) {
                Some(t) if snap.tenant(t).suspended => {
                    return Ok(Some(decided(
                        Action::Refuse(Error::TenantSuspended),
                        None,
                        Some(t),
                    )))
                }
                Some(t) => Some(t),
                None => {
                    return Ok(Some(decided(
                        Action::Refuse(Error::Unauthorized),
                        None,
                        None,
                    )))
                }
            }
        }
    };
    // A tenant's access requests are answered here whatever the routes say (without tenant
    // keys there are no tenants to ask, and the path is routed as any other).
    if let (Some(t), ACCESS_REQUESTS_PATH) = (tenant, plain_path) {
        let action = match head.method {
            Method::Post => Action::AccessRequests { file: true },
            Method::Get => Action::AccessRequests { file: false },
            Method::Head | Method::Other => Action::Refuse(Error::MethodNotAllowed),
        };
        return Ok(Some(decided(action, None, Some(t))));
    }
    // Model groups route LLM calls by their body; templates need the body too.
    let models_on = !snap.cfg.models.is_empty();
    let read_llm_body = models_on || !snap.cfg.templates.is_empty();
    let llm_call = llm::is_llm_request(req.method(), path);
    if models_on && req.method() == "GET" && plain_path == "/v1/models" {
        // The model groups the caller may use, answered here.
        return Ok(Some(decided(Action::Models, None, tenant)));
    }
    let Some(route) = snap.route_for(path) else {
        let action = if models_on && llm_call {
            Action::ProxyLlm { target: None }
        } else {
            Action::Refuse(Error::NoRoute)
        };
        return Ok(Some(decided(action, None, tenant)));
    };
    let upstream = snap.route_upstream(route);
    let ucfg = snap.upstream(upstream);
    let action = match ucfg.provider {
        Provider::Mock => match mock::serves(req.method(), path) {
            Some(endpoint) => Action::Mock(endpoint),
            None => Action::Refuse(Error::NoRoute),
        },
        // Every other provider's LLM calls always take the LLM path: Anthropic's version
        // header, Azure's deployment path, translation, Bedrock's signature.
        _ if llm_call && (tenant.is_some() || read_llm_body || ucfg.provider != Provider::Http) => {
            Action::ProxyLlm {
                target: Some(snap.pick_endpoint(upstream)),
            }
        }
        // Anything else would go unsigned.
        Provider::Bedrock => Action::Refuse(Error::BadRequest(
            "a Bedrock upstream serves only /v1/chat/completions and /v1/messages",
        )),
        Provider::Http
        | Provider::Anthropic
        | Provider::Azure
        | Provider::Gemini
        | Provider::OpenaiResponses => {
            let target = snap.pick_endpoint(upstream);
            wbuf.clear();
            let authority = snap
                .endpoint(upstream, target.endpoint)
                .authority
                .as_bytes();
            let attempt_span = trace.zip(random.as_mut()).map(|(t, r)| {
                let span = span_id(&mut **r);
                (span, t.traceparent(&span))
            });
            let creds = Credentials {
                drop_client_keys: snap.cfg.server.auth == Auth::Keys || ucfg.credential.is_some(),
                upstream: ucfg.credential.as_deref().unwrap_or_default(),
                client_tls,
                traceparent: attempt_span.as_ref().map(|(_, tp)| &tp[..]),
                ..Credentials::PASS
            };
            req.write_upstream_head_with(authority, client_ip, &creds, wbuf);
            return Ok(Some(Decision {
                attempt_span: attempt_span.map(|(s, _)| s),
                ..decided(Action::Proxy { target }, Some(route), tenant)
            }));
        }
    };
    Ok(Some(decided(action, Some(route), tenant)))
}

/// The method and target of the request line at the start of `head` (already parsed, so
/// well-formed).
pub fn request_line(head: &[u8]) -> (&str, &str) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    (
        std::str::from_utf8(method).unwrap_or(""),
        std::str::from_utf8(target).unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_counted_and_admitted_at_the_head() {
        use crate::snapshot::{EndpointIdx, PoolSlot, UpstreamId};
        let target = Target {
            upstream: UpstreamId::new(0),
            endpoint: EndpointIdx::new(0),
            slot: PoolSlot::new(0),
        };
        // (action, counted as work, admitted at the head)
        for (action, work, at_head) in [
            (Action::Health { readiness: true }, false, false),
            (Action::Refuse(Error::NoRoute), false, false),
            (Action::Proxy { target }, true, true),
            (Action::Models, true, true),
            (Action::AccessRequests { file: true }, true, true),
            (Action::Mock(MockEndpoint::Models), true, true),
            (Action::Mock(MockEndpoint::ChatCompletions), true, false),
            (Action::ProxyLlm { target: None }, true, false),
        ] {
            assert_eq!(
                (action.is_work(), action.admits_at_head()),
                (work, at_head),
                "{action:?}"
            );
        }
    }
}
