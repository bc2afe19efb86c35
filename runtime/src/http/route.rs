//! Routing without regular expressions, and the per-route metrics handles.
//!
//! actix-web compiles every pattern with a `{segment}` into a regex (regex-lite, a PikeVM:
//! no DFA) and tries the resources in order on every request; `match_pattern()`, which the
//! metrics middleware used for its `route` label, walks them again. In `benches/benches/http.rs`
//! (one worker, a service that answers at once) the regex engine was a quarter of the
//! worker's user-space samples. The API's paths are a fixed prefix plus at most one key
//! segment, so [`Route::of`] matches them with string comparisons, once per request, and the
//! middleware labels by the same [`Route`].
//!
//! Label values are the patterns actix's router had (`/v1/kv/{key}`, `unmatched` for a path
//! that is no route), so the metrics did not change. Each worker keeps the counter and
//! histogram handles it has used ([`RouteMetrics`]): registering one builds its label set and
//! looks it up in the recorder's registry, which the old middleware did on every request.

use actix_web::http::Method;
use std::cell::RefCell;
use std::collections::HashMap;

/// The API's routes (DESIGN.md §7). `KvNoKey` and `RingNoKey` are the prefixes without a key,
/// which answer 400 `invalid_key` rather than 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Route {
    /// `/v1/kv/{key}`
    Kv,
    /// `/v1/kv/`
    KvNoKey,
    /// `/v1/kv/{key}/cas`
    Cas,
    /// `/v1/cluster`
    Cluster,
    /// `/v1/cluster/members`
    Members,
    /// `/v1/cluster/config`
    Config,
    /// `/v1/cluster/learners`
    Learners,
    /// `/v1/cluster/promote`
    Promote,
    /// `/v1/cluster/remove`
    Remove,
    /// `/v1/cluster/replace`
    Replace,
    /// `/v1/cluster/drain`
    Drain,
    /// `/v1/cluster/transfer-leader`
    TransferLeader,
    /// `/v1/cluster/snapshot`
    Snapshot,
    /// `/v1/ring/route/{key}`
    Ring,
    /// `/v1/ring/route/`
    RingNoKey,
    /// `/v1/shards`
    Shards,
    /// `/v1/shards/preferred-leader`
    PreferredLeader,
    /// `/metrics`
    Metrics,
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
}

impl Route {
    /// The route of a raw request path (not percent-decoded: `%2F` inside a key is not a
    /// separator), `None` when it is no route. A `{key}` segment is one or more bytes without
    /// `/`, as actix's `{key}` was.
    pub(super) fn of(path: &str) -> Option<Route> {
        if let Some(rest) = path.strip_prefix(super::KV_PREFIX) {
            return match rest.split_once('/') {
                None if rest.is_empty() => Some(Route::KvNoKey),
                None => Some(Route::Kv),
                Some((key, "cas")) if !key.is_empty() => Some(Route::Cas),
                Some(_) => None,
            };
        }
        if let Some(rest) = path.strip_prefix(super::ROUTE_PREFIX) {
            return if rest.is_empty() {
                Some(Route::RingNoKey)
            } else if rest.contains('/') {
                None
            } else {
                Some(Route::Ring)
            };
        }
        Some(match path {
            "/v1/cluster" => Route::Cluster,
            "/v1/cluster/members" => Route::Members,
            "/v1/cluster/config" => Route::Config,
            "/v1/cluster/learners" => Route::Learners,
            "/v1/cluster/promote" => Route::Promote,
            "/v1/cluster/remove" => Route::Remove,
            "/v1/cluster/replace" => Route::Replace,
            "/v1/cluster/drain" => Route::Drain,
            "/v1/cluster/transfer-leader" => Route::TransferLeader,
            "/v1/cluster/snapshot" => Route::Snapshot,
            "/v1/shards" => Route::Shards,
            "/v1/shards/preferred-leader" => Route::PreferredLeader,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            _ => return None,
        })
    }

    /// The `route` label: the route's pattern.
    pub(super) fn pattern(self) -> &'static str {
        match self {
            Route::Kv => "/v1/kv/{key}",
            Route::KvNoKey => "/v1/kv/",
            Route::Cas => "/v1/kv/{key}/cas",
            Route::Cluster => "/v1/cluster",
            Route::Members => "/v1/cluster/members",
            Route::Config => "/v1/cluster/config",
            Route::Learners => "/v1/cluster/learners",
            Route::Promote => "/v1/cluster/promote",
            Route::Remove => "/v1/cluster/remove",
            Route::Replace => "/v1/cluster/replace",
            Route::Drain => "/v1/cluster/drain",
            Route::TransferLeader => "/v1/cluster/transfer-leader",
            Route::Snapshot => "/v1/cluster/snapshot",
            Route::Ring => "/v1/ring/route/{key}",
            Route::RingNoKey => "/v1/ring/route/",
            Route::Shards => "/v1/shards",
            Route::PreferredLeader => "/v1/shards/preferred-leader",
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
        }
    }
}

/// The `route` label of a raw request path.
pub(super) fn label(path: &str) -> &'static str {
    Route::of(path).map_or("unmatched", Route::pattern)
}

/// Most `(route, method, status)` counters a worker keeps handles for. The method is the
/// client's (any token is a method), so the set is bounded here; beyond it a request's counter
/// is looked up in the recorder as before.
const MAX_CACHED_COUNTERS: usize = 512;

/// One worker's handles of `conclave_http_requests_total{route,method,status}` and
/// `conclave_http_request_duration_seconds{route}` (actix-web runs each worker on one thread,
/// so no lock). Handles are registered on first use; the node installs its recorder before the
/// server starts.
#[derive(Default)]
pub(super) struct RouteMetrics {
    counters: RefCell<HashMap<(&'static str, Method, u16), metrics::Counter>>,
    histograms: RefCell<HashMap<&'static str, metrics::Histogram>>,
}

impl RouteMetrics {
    /// Counts one answered request and records its duration.
    pub(super) fn record(&self, route: &'static str, method: &Method, status: u16, secs: f64) {
        let register = || {
            metrics::counter!(
                "conclave_http_requests_total",
                "route" => route,
                "method" => method.as_str().to_owned(),
                "status" => status.to_string()
            )
        };
        {
            let mut counters = self.counters.borrow_mut();
            if let Some(c) = counters.get(&(route, method.clone(), status)) {
                c.increment(1);
            } else if counters.len() < MAX_CACHED_COUNTERS {
                let c = register();
                c.increment(1);
                counters.insert((route, method.clone(), status), c);
            } else {
                register().increment(1);
            }
        }
        self.histograms
            .borrow_mut()
            .entry(route)
            .or_insert_with(
                || metrics::histogram!("conclave_http_request_duration_seconds", "route" => route),
            )
            .record(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_patterns_actix_matched() {
        let cases = [
            ("/v1/kv/a", Some("/v1/kv/{key}")),
            ("/v1/kv/a%2Fb", Some("/v1/kv/{key}")),
            ("/v1/kv/", Some("/v1/kv/")),
            ("/v1/kv", None),
            ("/v1/kv/a/cas", Some("/v1/kv/{key}/cas")),
            ("/v1/kv//cas", None),
            ("/v1/kv/a/", None),
            ("/v1/kv/a/b", None),
            ("/v1/kv/a/cas/x", None),
            ("/v1/cluster", Some("/v1/cluster")),
            ("/v1/cluster/", None),
            ("/v1/cluster/members", Some("/v1/cluster/members")),
            ("/v1/cluster/config", Some("/v1/cluster/config")),
            ("/v1/cluster/learners", Some("/v1/cluster/learners")),
            ("/v1/cluster/promote", Some("/v1/cluster/promote")),
            ("/v1/cluster/remove", Some("/v1/cluster/remove")),
            ("/v1/cluster/replace", Some("/v1/cluster/replace")),
            ("/v1/cluster/drain", Some("/v1/cluster/drain")),
            (
                "/v1/cluster/transfer-leader",
                Some("/v1/cluster/transfer-leader"),
            ),
            ("/v1/cluster/snapshot", Some("/v1/cluster/snapshot")),
            ("/v1/ring/route/k", Some("/v1/ring/route/{key}")),
            ("/v1/ring/route/", Some("/v1/ring/route/")),
            ("/v1/ring/route/k/x", None),
            ("/v1/shards", Some("/v1/shards")),
            ("/v1/shards/", None),
            ("/metrics", Some("/metrics")),
            ("/healthz", Some("/healthz")),
            ("/readyz", Some("/readyz")),
            ("/readyz/", None),
            ("/", None),
            ("/nope", None),
        ];
        for (path, pattern) in cases {
            assert_eq!(Route::of(path).map(Route::pattern), pattern, "{path}");
            assert_eq!(label(path), pattern.unwrap_or("unmatched"), "{path}");
        }
    }
}
